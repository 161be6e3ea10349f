#!/usr/bin/env python3
"""Open N TLS connections, send one keep-alive request on each, then keep them idle.

Used by bench/tls_intercept.sh to measure a proxy's resident memory per idle
intercepted connection. Prints one JSON line when all connections are settled
(`{"open": ..., "failed": ..., "errors": {...}, "seconds": ...}`), writes the same
line to --ready, then holds the connections until it is sent SIGTERM/SIGINT or its
stdin closes (when --hold-stdin).

    idle_tls_clients.py --host 203.0.113.10 --sni origin.test --cafile ca.pem -n 5000 --path /1k
"""

import argparse
import asyncio
import json
import signal
import ssl
import sys
import time
from collections import Counter


async def one(args, ctx, sem, conns, errors):
    async with sem:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(args.host, args.port, ssl=ctx, server_hostname=args.sni), args.timeout)
            writer.write(f"GET {args.path} HTTP/1.1\r\nHost: {args.sni}\r\nUser-Agent: idle-bench\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), args.timeout)
            status = head.split(b" ", 2)[1]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value.strip())
                if name.strip().lower() == b"connection" and value.strip().lower() == b"close":
                    errors["server sent Connection: close"] += 1
            await asyncio.wait_for(reader.readexactly(length), args.timeout)
            if status != b"200":
                errors[f"status {status.decode()}"] += 1
            conns.append((reader, writer))
        except Exception as e:  # noqa: BLE001 - counted and reported
            errors[type(e).__name__ + (f": {e}" if isinstance(e, ssl.SSLError) else "")] += 1


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=443)
    p.add_argument("--sni", required=True)
    p.add_argument("--cafile", required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("-n", type=int, default=5000)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--timeout", type=float, default=30)
    p.add_argument("--ready")
    p.add_argument("--hold-stdin", action="store_true")
    args = p.parse_args()

    ctx = ssl.create_default_context(cafile=args.cafile)
    ctx.set_alpn_protocols(["http/1.1"])
    sem = asyncio.Semaphore(args.concurrency)
    conns, errors = [], Counter()
    start = time.monotonic()
    await asyncio.gather(*(one(args, ctx, sem, conns, errors) for _ in range(args.n)))
    line = json.dumps({"open": len(conns), "failed": args.n - len(conns), "errors": dict(errors),
                       "seconds": round(time.monotonic() - start, 2)})
    print(line, flush=True)
    if args.ready:
        with open(args.ready, "w") as f:
            f.write(line + "\n")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.hold_stdin:
        loop.run_in_executor(None, lambda: (sys.stdin.read(), loop.call_soon_threadsafe(stop.set)))
    await stop.wait()
    # How many did the proxy close while we held them idle?
    closed = sum(1 for r, _ in conns if r.at_eof())
    print(json.dumps({"closed_while_idle": closed}), flush=True)
    for _, w in conns:
        w.close()


if __name__ == "__main__":
    asyncio.run(main())
