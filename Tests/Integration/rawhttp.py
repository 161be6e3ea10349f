"""Byte-level HTTP/1.1 and WebSocket client helpers for the integration tests.

The tests need to send malformed and pipelined requests and to see exactly
what comes back, which ordinary client libraries refuse to do.
"""

import base64
import json
import os
import socket

from origin import ws_accept, ws_frame, ws_mask


class Response:
    def __init__(self, version, status, reason, headers, body, head):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers  # list of (name, value) in received order
        self.body = body
        self.head = head

    def header(self, name):
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    def json(self):
        return json.loads(self.body)

    def __repr__(self):
        return f"<Response {self.status} {self.reason!r} {len(self.body)} bytes; head={self.head[:400]!r}>"


class Closed(Exception):
    """The peer closed the connection before a complete response arrived."""

    def __init__(self, data=b""):
        super().__init__(f"connection closed after {len(data)} bytes: {data[:200]!r}")
        self.data = data


class RawClient:
    """A socket plus a receive buffer: send raw bytes, read whole responses."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        data = self.sock.recv(262144)
        if not data:
            raise Closed(bytes(self.buf))
        self.buf += data

    def _until(self, marker, limit=1 << 20):
        while True:
            i = self.buf.find(marker)
            if i >= 0:
                out = bytes(self.buf[:i])
                del self.buf[:i + len(marker)]
                return out
            if len(self.buf) > limit:
                raise AssertionError("response head too long")
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n:
            self._fill()
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    def read_head(self):
        head = self._until(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        version, status, *reason = lines[0].decode("latin-1").split(" ", 2)
        headers = []
        for line in lines[1:]:
            k, _, v = line.decode("latin-1").partition(":")
            headers.append((k, v.strip()))
        return version, int(status), (reason[0] if reason else ""), headers, head

    def read_response(self, method="GET", skip_informational=True):
        """Read one response; the body is framed per RFC 9112 §6.3."""
        while True:
            version, status, reason, headers, head = self.read_head()
            if 100 <= status < 200 and status != 101 and skip_informational:
                continue
            break
        resp = Response(version, status, reason, headers, b"", head)
        if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
            return resp
        te = resp.header("transfer-encoding")
        cl = resp.header("content-length")
        if te is not None and te.lower().endswith("chunked"):
            parts = []
            while True:
                size = int(self._until(b"\r\n").split(b";")[0].strip(), 16)
                if size == 0:
                    while self._until(b"\r\n") != b"":
                        pass
                    break
                parts.append(self._exact(size))
                assert self._exact(2) == b"\r\n", "chunk data not followed by CRLF"
            resp.body = b"".join(parts)
        elif cl is not None:
            resp.body = self._exact(int(cl))
        else:
            resp.body = self.read_to_close()
        return resp

    def read_to_close(self):
        while True:
            try:
                self._fill()
            except Closed:
                out = bytes(self.buf)
                self.buf.clear()
                return out

    def read_available(self, timeout=1.0):
        """Whatever arrives until the peer closes or `timeout` passes quietly."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            while True:
                self._fill()
        except (Closed, socket.timeout, ConnectionResetError):
            pass
        finally:
            self.sock.settimeout(old)
        out = bytes(self.buf)
        self.buf.clear()
        return out

    def closed_by_peer(self, timeout=3.0):
        """True when the peer closes (FIN or RST) within timeout, with no more data."""
        old = self.sock.gettimeout()
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        finally:
            self.sock.settimeout(old)

    # -- WebSocket ------------------------------------------------------------
    def ws_handshake(self, host, path="/ws"):
        key = base64.b64encode(os.urandom(16)).decode()
        self.send((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                   f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        resp = self.read_response(skip_informational=False)
        return resp, ws_accept(key)

    def ws_send(self, opcode, payload):
        self.send(ws_frame(opcode, payload, mask=os.urandom(4)))

    def ws_recv(self):
        """One frame from the server: (opcode, payload); server frames are unmasked."""
        b0, b1 = self._exact(2)
        length = b1 & 0x7F
        if length == 126:
            length = int.from_bytes(self._exact(2), "big")
        elif length == 127:
            length = int.from_bytes(self._exact(8), "big")
        mask = self._exact(4) if b1 & 0x80 else None
        payload = self._exact(length)
        if mask:
            payload = ws_mask(payload, mask)
        return b0 & 0x0F, payload


def request(method, target, host, headers=(), body=b""):
    """Serialise a well-formed request (Content-Length added when there is a body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"] + [f"{k}: {v}" for k, v in headers]
    if body and not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
