"""HTTPS origins for the TLS integration tests, run inside the `internet` namespace.

    tls_origin.py --serve ADDR:PORT:CERT:KEY [--serve ...] --ready FILE

Each listener speaks HTTP/1.1 over TLS with its own certificate (valid, expired, wrong name,
unknown issuer...). Endpoints: /bytes/N (N deterministic bytes), /host (the Host header and the
SNI the client sent, as JSON). Keep-alive works, so upstream pooling can be observed via the
`connection` counter each response carries in X-Connection.
"""

import argparse
import itertools
import json
import socket
import ssl
import threading

COUNTER = itertools.count(1)


def body_bytes(n):
    pattern = bytes(range(256))
    return (pattern * (n // 256 + 1))[:n]


def serve_connection(raw, context):
    connection_id = next(COUNTER)
    try:
        conn = context.wrap_socket(raw, server_side=True)
    except (ssl.SSLError, OSError):
        raw.close()
        return
    reader = conn.makefile("rb")
    try:
        while True:
            line = reader.readline(65536)
            if not line:
                return
            method, target, _ = line.decode("latin-1").split(" ", 2)
            headers = {}
            while True:
                h = reader.readline(65536)
                if h in (b"\r\n", b"\n", b""):
                    break
                k, v = h.decode("latin-1").split(":", 1)
                headers[k.strip().lower()] = v.strip()
            length = int(headers.get("content-length", "0"))
            if length:
                reader.read(length)
            if target.startswith("/bytes/"):
                body = body_bytes(int(target.split("/")[2]))
                ctype = "application/octet-stream"
            else:
                body = json.dumps({"host": headers.get("host"), "sni": getattr(conn, "tg_sni", None),
                                   "target": target}).encode()
                ctype = "application/json"
            head = (f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"X-Connection: {connection_id}\r\n\r\n").encode()
            conn.sendall(head + (b"" if method == "HEAD" else body))
    except (OSError, ValueError, ssl.SSLError):
        pass
    finally:
        try:
            conn.close()
        except OSError:
            pass


def listen(spec):
    host, port, cert, key = spec.split(":", 3)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def remember(sslsock, name, ctx):
        sslsock.tg_sni = name

    context.sni_callback = remember
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, int(port)))
    sock.listen(512)

    def accept_loop():
        while True:
            raw, _ = sock.accept()
            threading.Thread(target=serve_connection, args=(raw, context), daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", action="append", default=[])
    parser.add_argument("--ready", required=True)
    args = parser.parse_args()
    for spec in args.serve:
        listen(spec)
    open(args.ready, "w").close()
    threading.Event().wait()


if __name__ == "__main__":
    main()
