#!/usr/bin/env python3
"""A small keep-alive HTTP/1.1 load client with exact counts, for throughput comparisons.

Sends `count` GET requests for PATH_PREFIX + number (numbers start..start+count-1), over
`concurrency` keep-alive connections, one request in flight per connection, from one
thread (selectors). Prints one JSON object: ok (2xx), failed, statuses, seconds, rate.

    loadgen.py --target 203.0.113.10:80 --prefix '/1k?mabc-' --count 5000 --concurrency 8
"""

import argparse
import errno
import json
import selectors
import socket
import sys
import time


class Conn:
    __slots__ = ("sock", "buf", "n", "sent_at", "out")

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.n = None
        self.out = b""


def parse_response(buf):
    """(status, total length) of the first complete response in buf, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = buf[:end].decode("latin-1")
    lines = head.split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value.strip())
        elif name == "transfer-encoding":
            raise ValueError("chunked responses are not supported by loadgen")
        elif name == "connection" and value.strip().lower() == "close":
            close = True
    total = end + 4 + length
    if len(buf) < total:
        return None
    return status, total, close


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True, help="HOST:PORT to connect to")
    ap.add_argument("--host", help="Host header (default: the target host)")
    ap.add_argument("--prefix", required=True, help="request target prefix; the number is appended")
    ap.add_argument("--start", type=int, default=0)
    ap.add_argument("--count", type=int, required=True)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=60.0, help="give up after this many seconds")
    args = ap.parse_args(argv)

    host, _, port = args.target.rpartition(":")
    addr = (host, int(port))
    host_header = args.host or host
    sel = selectors.DefaultSelector()
    next_n = args.start
    end_n = args.start + args.count
    ok = failed = 0
    statuses = {}
    errors = {}
    retries = {}

    def request_bytes(n):
        return (f"GET {args.prefix}{n} HTTP/1.1\r\nHost: {host_header}\r\n"
                f"User-Agent: tollgate-loadgen\r\nAccept: */*\r\n\r\n").encode()

    def open_conn():
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        err = s.connect_ex(addr)
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, "connect")
        c = Conn(s)
        sel.register(s, selectors.EVENT_WRITE, c)
        return c

    def assign(c, n=None):
        nonlocal next_n
        if n is None:
            if next_n >= end_n:
                return False
            n = next_n
            next_n += 1
        c.n = n
        c.out = request_bytes(n)
        sel.modify(c.sock, selectors.EVENT_WRITE, c)
        return True

    def drop(c, reason):
        """Connection failed: retry its request once on a new connection, else count it failed."""
        nonlocal failed
        sel.unregister(c.sock)
        c.sock.close()
        n = c.n
        if n is not None:
            if retries.get(n, 0) < 1 and reason == "closed" and c.buf == b"":
                retries[n] = retries.get(n, 0) + 1
                nc = open_conn()
                assign(nc, n)
                return
            failed += 1
            errors[reason] = errors.get(reason, 0) + 1
        nc = open_conn()
        if not assign(nc):
            sel.unregister(nc.sock)
            nc.sock.close()

    started = time.monotonic()
    for _ in range(min(args.concurrency, args.count)):
        c = open_conn()
        assign(c)
    deadline = started + args.timeout
    while sel.get_map():
        if time.monotonic() > deadline:
            break
        for key, events in sel.select(timeout=1.0):
            c = key.data
            if events & selectors.EVENT_WRITE:
                try:
                    sent = c.sock.send(c.out)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as exc:
                    drop(c, errno.errorcode.get(exc.errno, str(exc)))
                    continue
                c.out = c.out[sent:]
                if not c.out:
                    sel.modify(c.sock, selectors.EVENT_READ, c)
                continue
            try:
                data = c.sock.recv(262144)
            except (BlockingIOError, InterruptedError):
                continue
            except OSError as exc:
                drop(c, errno.errorcode.get(exc.errno, str(exc)))
                continue
            if not data:
                drop(c, "closed")
                continue
            c.buf += data
            parsed = parse_response(c.buf)
            if parsed is None:
                continue
            status, total, close = parsed
            c.buf = c.buf[total:]
            statuses[str(status)] = statuses.get(str(status), 0) + 1
            if 200 <= status < 300:
                ok += 1
            else:
                failed += 1
            c.n = None
            if close:
                sel.unregister(c.sock)
                c.sock.close()
                if next_n < end_n:
                    assign(open_conn())
                continue
            if not assign(c):
                sel.unregister(c.sock)
                c.sock.close()
    seconds = time.monotonic() - started
    unfinished = end_n - args.start - ok - failed
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    json.dump({"ok": ok, "failed": failed, "unfinished": unfinished, "statuses": statuses,
               "errors": errors, "seconds": round(seconds, 4),
               "rate": round((ok + failed) / seconds, 1) if seconds else 0.0}, sys.stdout)
    sys.stdout.write("\n")
    return 0 if failed == 0 and unfinished == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
