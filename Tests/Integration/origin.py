#!/usr/bin/env python3
"""Origin HTTP/1.1 server for Tollgate's integration tests.

Raw sockets and one thread per connection, so the tests control every byte the
proxy sees. Keep-alive and pipelining work (requests on a connection are read
from one buffer and answered in order). Every connection and request is written
to a JSON-lines log (flushed per line) so tests can assert what reached the
upstream side: "nothing was forwarded", "one connection served many requests".

Run inside the `internet` namespace:
    origin.py --listen 203.0.113.10:80 --silent 203.0.113.12:80 --echo 203.0.113.13:443 --log FILE

--silent listeners accept and never answer (upstream timeouts); --echo
listeners echo raw bytes back (stand-ins for TLS and other non-HTTP traffic).

Endpoints (GET unless noted; HEAD works for every GET endpoint):
    /1k              1024 deterministic bytes (see `pattern`)
    /bytes/N         N deterministic bytes, streamed, Content-Length
    /chunked/N       N deterministic bytes, chunked encoding, varying chunk sizes
    /slow/N          N bytes trickled: ?chunk=BYTES (1024) every ?ms=MS (50)
    /close[/N]       no Content-Length, body (default 1024 bytes) ends at close
    /idle-close/N    N bytes with Content-Length and keep-alive, then the connection is
                     closed 0.2 s later without a word (a server's keep-alive timeout)
    /upload          any method; reads the body (Content-Length or chunked),
                     replies JSON {"bytes": n, "sha256": hex}
    /echo-headers    JSON {"method", "target", "version", "headers": [[k, v]...]}
    /ws              WebSocket handshake, then echoes text/binary frames
    /status/N        status N, small body (none for 204/304)
Every response carries X-Origin-Conn (connection id) and X-Origin-Seq (request
number on that connection).

Log events (one JSON object per line, all with "event", "conn" and "time"):
    accept        a connection arrived (listener, client ip:port)
    request       a request head was parsed (seq, method, target, version, headers)
    body          a request body was read completely (seq, bytes)
    response      a response ended, completely or not (seq, sent = bytes written)
    bad_request   the origin could not parse what it got (data = first bytes)
    silent_data / echo_data   first bytes seen by a --silent / --echo listener
    close         the connection ended (bytes_in, bytes_out)
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import sys
import threading
import time
from urllib.parse import parse_qs, urlsplit

# ---------------------------------------------------------------------------
# Deterministic body bytes. Byte k of every body is BLOCK[k % len(BLOCK)]. The
# period is prime so it never lines up with power-of-two buffer sizes, which
# makes dropped, duplicated or reordered buffers visible in a digest.
PERIOD = 65521


def _make_block():
    out = bytearray()
    counter = 0
    while len(out) < PERIOD:
        out += hashlib.sha256(b"tollgate-origin-%d" % counter).digest()
        counter += 1
    return bytes(out[:PERIOD])


BLOCK = _make_block()
_BLOCK2 = BLOCK + BLOCK


def pattern(offset, n):
    """Return n bytes of the body pattern starting at byte `offset`."""
    parts = []
    while n > 0:
        start = offset % PERIOD
        take = min(n, PERIOD)
        parts.append(_BLOCK2[start:start + take])
        offset += take
        n -= take
    return b"".join(parts)


def iter_pattern(n, piece=65536):
    """Yield the first n pattern bytes in pieces of at most `piece` bytes."""
    offset = 0
    while offset < n:
        take = min(piece, n - offset)
        yield pattern(offset, take)
        offset += take


def pattern_sha256(n):
    """sha256 hex digest of the first n pattern bytes."""
    h = hashlib.sha256()
    for piece in iter_pattern(n, 1 << 20):
        h.update(piece)
    return h.hexdigest()


WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_accept(key):
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (RFC 6455 §4.2.2)."""
    return base64.b64encode(hashlib.sha1(key.strip().encode() + WS_GUID).digest()).decode()


# ---------------------------------------------------------------------------
class RequestLog:
    """Thread-safe JSON-lines log, flushed per record so readers see it at once."""

    def __init__(self, path):
        self._lock = threading.Lock()
        self._file = open(path, "a", buffering=1) if path else None

    def write(self, **record):
        if self._file is None:
            return
        record["time"] = time.time()
        line = json.dumps(record)
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()


class ClientGone(Exception):
    pass


class BadRequest(Exception):
    pass


class Conn:
    """Buffered reader over one accepted socket."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()
        self.bytes_in = 0
        self.bytes_out = 0

    def fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise ClientGone()
        self.bytes_in += len(data)
        self.buf += data

    def read_until(self, marker, limit):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise BadRequest("line or head too long")
            self.fill()

    def read_exact(self, n):
        while len(self.buf) < n:
            self.fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_some(self, maximum):
        if not self.buf:
            self.fill()
        out = bytes(self.buf[:maximum])
        del self.buf[:maximum]
        return out

    def send(self, data):
        # Not sendall: count what really left, so a response cut short is measured.
        view = memoryview(data)
        while view:
            n = self.sock.send(view)
            self.bytes_out += n
            view = view[n:]


class Origin:
    def __init__(self, log_path):
        self.log = RequestLog(log_path)
        self._ids = 0
        self._ids_lock = threading.Lock()

    def next_id(self):
        with self._ids_lock:
            self._ids += 1
            return self._ids

    # -- listeners ----------------------------------------------------------
    def serve(self, host, port, mode="http"):
        lsock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind((host, port))
        lsock.listen(1024)
        target = {"http": self._connection, "silent": self._silent, "echo": self._echo}[mode]
        t = threading.Thread(target=self._accept_loop, args=(lsock, target, f"{host}:{port}"), daemon=True)
        t.start()
        return lsock

    def _accept_loop(self, lsock, target, listener):
        while True:
            sock, addr = lsock.accept()
            cid = self.next_id()
            self.log.write(event="accept", conn=cid, listener=listener, client=f"{addr[0]}:{addr[1]}")
            threading.Thread(target=target, args=(sock, cid, addr, listener), daemon=True).start()

    def _silent(self, sock, cid, addr, listener):
        """Accept, read everything, never answer: an upstream that hangs."""
        total = 0
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                if total == 0:
                    self.log.write(event="silent_data", conn=cid, listener=listener,
                                   data=data[:4096].decode("latin-1"))
                total += len(data)
        except OSError:
            pass
        finally:
            self.log.write(event="close", conn=cid, bytes_in=total, bytes_out=0)
            sock.close()

    def _echo(self, sock, cid, addr, listener):
        """Raw TCP echo: stands in for TLS and other non-HTTP protocols."""
        total = 0
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                if total == 0:
                    self.log.write(event="echo_data", conn=cid, listener=listener,
                                   data=data[:4096].decode("latin-1"))
                total += len(data)
                sock.sendall(data)
        except OSError:
            pass
        finally:
            self.log.write(event="close", conn=cid, bytes_in=total, bytes_out=total)
            sock.close()

    # -- HTTP ----------------------------------------------------------------
    def _connection(self, sock, cid, addr, listener):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = Conn(sock)
        seq = 0
        try:
            while True:
                try:
                    head = conn.read_until(b"\r\n\r\n", 1 << 20)
                except ClientGone:
                    break
                seq += 1
                try:
                    req = self._parse_head(head)
                except BadRequest as exc:
                    self.log.write(event="bad_request", conn=cid, seq=seq, reason=str(exc),
                                   data=head[:4096].decode("latin-1"))
                    self._respond(conn, cid, seq, 400, b"bad request\n", close=True)
                    break
                self.log.write(event="request", conn=cid, seq=seq, listener=listener,
                               client=f"{addr[0]}:{addr[1]}", method=req["method"],
                               target=req["target"], version=req["version"],
                               headers=req["headers"])
                started_out = conn.bytes_out
                complete = False
                try:
                    keep = self._handle(conn, cid, seq, req)
                    complete = True
                finally:
                    # Bytes this response put on the wire (head included), even when cut short.
                    self.log.write(event="response", conn=cid, seq=seq, sent=conn.bytes_out - started_out,
                                   complete=complete)
                if not keep:
                    break
        except (ClientGone, ConnectionError, BrokenPipeError, TimeoutError):
            pass
        except BadRequest as exc:
            self.log.write(event="bad_request", conn=cid, seq=seq, reason=str(exc), data="")
        finally:
            self.log.write(event="close", conn=cid, bytes_in=conn.bytes_in, bytes_out=conn.bytes_out)
            try:
                sock.close()
            except OSError:
                pass

    @staticmethod
    def _parse_head(head):
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
            raise BadRequest("bad request line")
        headers = []
        for line in lines[1:]:
            if b":" not in line:
                raise BadRequest("header without colon")
            k, v = line.split(b":", 1)
            headers.append([k.decode("latin-1"), v.strip(b" \t").decode("latin-1")])
        return {
            "method": parts[0].decode("latin-1"),
            "target": parts[1].decode("latin-1"),
            "version": parts[2].decode("latin-1"),
            "headers": headers,
        }

    @staticmethod
    def _header(req, name):
        name = name.lower()
        for k, v in req["headers"]:
            if k.lower() == name:
                return v
        return None

    def _wants_close(self, req):
        conn_hdr = (self._header(req, "connection") or "").lower()
        if req["version"] == "HTTP/1.0":
            return "keep-alive" not in conn_hdr
        return "close" in conn_hdr

    def _read_body(self, conn, req, sink):
        """Feed the request body to sink(bytes); return the byte count."""
        te = self._header(req, "transfer-encoding")
        cl = self._header(req, "content-length")
        total = 0
        if te is not None:
            if te.strip().lower() != "chunked":
                raise BadRequest("unsupported transfer-encoding")
            while True:
                line = conn.read_until(b"\r\n", 4096)
                size_text = line.split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise BadRequest("bad chunk size")
                if size == 0:
                    while conn.read_until(b"\r\n", 65536) != b"":
                        pass  # trailers
                    return total
                remaining = size
                while remaining > 0:
                    piece = conn.read_some(remaining)
                    sink(piece)
                    remaining -= len(piece)
                    total += len(piece)
                if conn.read_exact(2) != b"\r\n":
                    raise BadRequest("chunk not followed by CRLF")
        if cl is not None:
            remaining = int(cl)
            while remaining > 0:
                piece = conn.read_some(min(remaining, 262144))
                sink(piece)
                remaining -= len(piece)
                total += len(piece)
        return total

    def _respond(self, conn, cid, seq, status, body, headers=(), close=False, head_only=False,
                 content_type="application/octet-stream"):
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        lines.append(f"Content-Type: {content_type}")
        if status not in (204, 304) and not (100 <= status < 200):
            lines.append(f"Content-Length: {len(body)}")
        lines += [f"X-Origin-Conn: {cid}", f"X-Origin-Seq: {seq}"]
        lines += list(headers)
        if close:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if not head_only and status not in (204, 304):
            data += body
        conn.send(data)

    def _handle(self, conn, cid, seq, req):
        """Serve one request; return False when the connection must close."""
        method = req["method"]
        url = urlsplit(req["target"])
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        close = self._wants_close(req)
        head_only = method == "HEAD"

        if (self._header(req, "expect") or "").lower() == "100-continue":
            conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")

        if path == "/ws" and (self._header(req, "upgrade") or "").lower() == "websocket":
            self._websocket(conn, cid, seq, req)
            return False

        # Every other endpoint consumes a request body if one was sent.
        hasher = hashlib.sha256()
        body_bytes = self._read_body(conn, req, hasher.update)
        if self._header(req, "transfer-encoding") is not None or self._header(req, "content-length") is not None:
            self.log.write(event="body", conn=cid, seq=seq, bytes=body_bytes, complete=True)

        parts = [p for p in path.split("/") if p]
        try:
            arg = int(parts[1]) if len(parts) > 1 else None
        except ValueError:
            arg = None

        if path == "/1k":
            self._respond(conn, cid, seq, 200, pattern(0, 1024), close=close, head_only=head_only)
        elif parts and parts[0] == "bytes" and arg is not None:
            self._stream_fixed(conn, cid, seq, arg, close, head_only)
        elif parts and parts[0] == "chunked" and arg is not None:
            self._stream_chunked(conn, cid, seq, arg, close, head_only)
        elif parts and parts[0] == "slow" and arg is not None:
            chunk = int(query.get("chunk", 1024))
            delay = int(query.get("ms", 50)) / 1000.0
            self._stream_fixed(conn, cid, seq, arg, close, head_only, piece=chunk, delay=delay)
        elif parts and parts[0] == "close":
            n = arg if arg is not None else 1024
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    f"X-Origin-Conn: {cid}\r\nX-Origin-Seq: {seq}\r\nConnection: close\r\n\r\n")
            conn.send(head.encode())
            if not head_only:
                for piece in iter_pattern(n):
                    conn.send(piece)
            return False
        elif parts and parts[0] == "idle-close" and arg is not None:
            self._respond(conn, cid, seq, 200, pattern(0, arg), close=False, head_only=head_only)
            time.sleep(0.2)
            return False
        elif path == "/upload":
            body = json.dumps({"bytes": body_bytes, "sha256": hasher.hexdigest()}).encode()
            self._respond(conn, cid, seq, 200, body, close=close, head_only=head_only,
                          content_type="application/json")
        elif path == "/echo-headers":
            body = json.dumps({"method": method, "target": req["target"], "version": req["version"],
                               "headers": req["headers"], "body_bytes": body_bytes}).encode()
            # ?set_cookie=SEED adds `Set-Cookie: sid=<sha256 hex of SEED>; Path=/; HttpOnly`, a
            # value that appears nowhere in the request (redaction tests).
            extra = []
            if "set_cookie" in query:
                cookie = hashlib.sha256(query["set_cookie"].encode()).hexdigest()
                extra = [f"Set-Cookie: sid={cookie}; Path=/; HttpOnly"]
            self._respond(conn, cid, seq, 200, body, headers=extra, close=close, head_only=head_only,
                          content_type="application/json")
        elif parts and parts[0] == "status" and arg is not None:
            self._respond(conn, cid, seq, arg, b"status %d\n" % arg, close=close, head_only=head_only,
                          content_type="text/plain")
        else:
            self._respond(conn, cid, seq, 404, b"not found\n", close=close, head_only=head_only,
                          content_type="text/plain")
        return not close

    def _stream_fixed(self, conn, cid, seq, n, close, head_only, piece=65536, delay=0.0):
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {n}\r\n"
                f"X-Origin-Conn: {cid}\r\nX-Origin-Seq: {seq}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        conn.send(head.encode())
        if head_only:
            return
        for chunk in iter_pattern(n, piece):
            conn.send(chunk)
            if delay:
                time.sleep(delay)

    def _stream_chunked(self, conn, cid, seq, n, close, head_only):
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n"
                f"X-Origin-Conn: {cid}\r\nX-Origin-Seq: {seq}\r\n"
                + ("Connection: close\r\n" if close else "") + "\r\n")
        conn.send(head.encode())
        if head_only:
            return
        offset, size = 0, 1
        while offset < n:
            take = min(size, n - offset)
            conn.send(b"%x\r\n" % take + pattern(offset, take) + b"\r\n")
            offset += take
            size = size * 3 + 7 if size < 20000 else 1
        conn.send(b"0\r\n\r\n")

    # -- WebSocket -------------------------------------------------------------
    def _websocket(self, conn, cid, seq, req):
        key = self._header(req, "sec-websocket-key") or ""
        conn.send((f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Accept: {ws_accept(key)}\r\nX-Origin-Conn: {cid}\r\n"
                   f"X-Origin-Seq: {seq}\r\n\r\n").encode())
        frames = 0
        while True:
            b0, b1 = conn.read_exact(2)
            opcode = b0 & 0x0F
            masked = b1 & 0x80
            length = b1 & 0x7F
            if length == 126:
                length = int.from_bytes(conn.read_exact(2), "big")
            elif length == 127:
                length = int.from_bytes(conn.read_exact(8), "big")
            mask = conn.read_exact(4) if masked else b"\0\0\0\0"
            payload = ws_mask(conn.read_exact(length), mask)
            frames += 1
            if opcode == 0x8:  # close: echo it and stop
                conn.send(ws_frame(0x8, bytes(payload[:2])))
                self.log.write(event="ws_closed", conn=cid, frames=frames)
                return
            if opcode == 0x9:  # ping
                conn.send(ws_frame(0xA, bytes(payload)))
                continue
            if opcode in (0x1, 0x2, 0x0):
                conn.send(ws_frame(b0 & 0x0F, bytes(payload), fin=bool(b0 & 0x80)))


def ws_frame(opcode, payload, fin=True, mask=None):
    """Encode one WebSocket frame (masked when `mask` is 4 bytes)."""
    b0 = (0x80 if fin else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = bytes([b0, mbit | n])
    elif n < 65536:
        head = bytes([b0, mbit | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([b0, mbit | 127]) + n.to_bytes(8, "big")
    if mask:
        return head + mask + ws_mask(payload, mask)
    return head + payload


def ws_mask(data, mask):
    """XOR data with the repeating 4-byte mask (its own inverse)."""
    n = len(data)
    if n == 0:
        return b""
    key = (bytes(mask) * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


REASONS = {
    100: "Continue", 101: "Switching Protocols", 200: "OK", 201: "Created", 204: "No Content",
    301: "Moved Permanently", 302: "Found", 304: "Not Modified", 400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 413: "Content Too Large",
    418: "I'm a teapot", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


def _addr(text):
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--listen", action="append", default=[], help="HOST:PORT serving HTTP")
    ap.add_argument("--silent", action="append", default=[], help="HOST:PORT that accepts and never answers")
    ap.add_argument("--echo", action="append", default=[], help="HOST:PORT echoing raw TCP bytes")
    ap.add_argument("--log", help="JSON-lines request log")
    ap.add_argument("--ready", help="file to create once every listener is bound")
    args = ap.parse_args(argv)
    origin = Origin(args.log)
    for spec in args.listen:
        origin.serve(*_addr(spec))
    for spec in args.silent:
        origin.serve(*_addr(spec), mode="silent")
    for spec in args.echo:
        origin.serve(*_addr(spec), mode="echo")
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(str(os.getpid()))
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
