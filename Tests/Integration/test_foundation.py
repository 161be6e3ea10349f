"""Issue 2: plain-HTTP proxying through the transparent and explicit listeners."""

import hashlib
import json
import subprocess
import time

import pytest

from helpers import (COMMON_FIELDS, HTTP_FIELDS, assert_flow, curl, field, flows_from, worker_client)
from origin import pattern
from rawhttp import request
from testbed import (ECHO_IP, EXPLICIT_PORT, GATEWAY_INTERNET_IP, GATEWAY_WORKER_IP, ORIGIN_IP, WORKER2_IP,
                     WORKER_IP)

PROXY = f"http://{GATEWAY_WORKER_IP}:{EXPLICIT_PORT}"


@pytest.mark.parametrize("path,length", [
    ("/1k", 1024),
    ("/bytes/300001", 300001),
    ("/chunked/300001", 300001),
    ("/close/70001", 70001),
])
def test_transparent_request_returns_the_origins_exact_bytes(testbed, origin, tollgate, marker, path, length):
    url = f"http://{ORIGIN_IP}{path}?{marker}"
    res = curl(testbed, url)
    assert res.rc == 0 and res.status == 200, res
    assert res.body == pattern(0, length)

    [seen] = origin.requests(marker)
    assert seen["client"].startswith(GATEWAY_INTERNET_IP + ":"), "upstream connection should come from the gateway"
    assert seen["target"] == f"{path}?{marker}"

    [flow] = flows_from(tollgate, res.local_port)
    assert_flow(flow, {
        "event.action": "http_request", "source.ip": WORKER_IP, "destination.ip": ORIGIN_IP,
        "destination.port": 80, "url.full": url, "url.domain": ORIGIN_IP, "http.request.method": "GET",
        "http.response.status_code": 200, "http.request.body.bytes": 0, "network.protocol": "http",
        "tollgate.agent": "worker-1", "tollgate.mode": "transparent",
    })
    assert field(flow, "http.response.body.bytes") >= length
    assert "error" not in flow


def test_transparent_request_by_host_name_records_the_host(testbed, origin, tollgate, marker):
    url = f"http://origin.test/1k?{marker}"
    res = curl(testbed, url)
    assert res.status == 200 and res.body == pattern(0, 1024), res
    [seen] = origin.requests(marker)
    assert dict((k.lower(), v) for k, v in seen["headers"])["host"] == "origin.test"
    [flow] = flows_from(tollgate, res.local_port)
    assert_flow(flow, {"url.full": url, "url.domain": "origin.test", "destination.ip": ORIGIN_IP})


def test_unknown_source_is_recorded_as_agent_unknown(testbed, origin, tollgate, marker):
    res = curl(testbed, "--interface", WORKER2_IP, f"http://{ORIGIN_IP}/1k?{marker}")
    assert res.status == 200, res
    [flow] = flows_from(tollgate, res.local_port, ip=WORKER2_IP)
    assert_flow(flow, {"tollgate.agent": "unknown", "source.ip": WORKER2_IP})


def test_explicit_proxy_forwards_absolute_form_requests(testbed, origin, tollgate, marker):
    url = f"http://{ORIGIN_IP}/bytes/100003?{marker}"
    res = curl(testbed, "-x", PROXY, url)
    assert res.status == 200 and res.body == pattern(0, 100003), res
    [seen] = origin.requests(marker)
    assert seen["target"] == f"/bytes/100003?{marker}", "upstream must get origin-form"
    [flow] = flows_from(tollgate, res.local_port)
    assert_flow(flow, {
        "event.action": "http_request", "tollgate.mode": "explicit", "url.full": url,
        "destination.ip": ORIGIN_IP, "destination.port": 80, "http.response.status_code": 200,
        "http.response.body.bytes": 100003, "tollgate.agent": "worker-1",
    })


def test_explicit_proxy_resolves_host_names(testbed, origin, tollgate, marker):
    url = f"http://origin.test/1k?{marker}"
    res = curl(testbed, "-x", PROXY, url)
    assert res.status == 200 and res.body == pattern(0, 1024), res
    [flow] = flows_from(tollgate, res.local_port)
    assert_flow(flow, {"url.domain": "origin.test", "destination.ip": ORIGIN_IP, "tollgate.mode": "explicit"})


def test_connect_tunnel_relays_bytes(testbed, origin, tollgate, marker):
    res = curl(testbed, "-p", "-x", PROXY, f"http://{ORIGIN_IP}/bytes/200000?{marker}")
    assert res.status == 200 and res.body == pattern(0, 200000), res
    [seen] = origin.requests(marker)
    assert seen["client"].startswith(GATEWAY_INTERNET_IP + ":")
    # One record for the tunnel; Tollgate may also record the requests it sees inside it.
    [flow] = flows_from(tollgate, res.local_port, extra=lambda r: field(r, "event.action", None) == "tunnel")
    assert_flow(flow, {"tollgate.mode": "explicit", "destination.ip": ORIGIN_IP,
                       "destination.port": 80, "tollgate.agent": "worker-1"}, required=COMMON_FIELDS)


def test_hop_by_hop_headers_are_removed_and_via_added(testbed, origin, tollgate, marker):
    with worker_client(testbed) as c:
        c.send(request("GET", f"/echo-headers?{marker}", ORIGIN_IP, headers=[
            ("Connection", "keep-alive, X-Hop"), ("X-Hop", "secret"), ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"), ("TE", "trailers"), ("X-End-To-End", "kept")]))
        resp = c.read_response()
    assert resp.status == 200, resp
    got = {k.lower(): v for k, v in resp.json()["headers"]}
    assert got.get("x-end-to-end") == "kept"
    for hop in ("x-hop", "keep-alive", "proxy-connection", "te"):
        assert hop not in got, f"hop-by-hop header {hop} was forwarded: {got}"
    assert "via" in got, f"no Via header added: {got}"


def test_keep_alive_reuses_one_upstream_connection(testbed, origin, tollgate, marker):
    urls = [f"http://{ORIGIN_IP}/bytes/{1000 + i}?{marker}-{i}" for i in range(5)]
    argv = ["curl", "-sS", "-w", "%{http_code} %{local_port} %{num_connects}\\n"]
    for url in urls:
        argv += ["-o", "/dev/null", url]
    res = testbed.run_in(testbed.worker, argv, timeout=60)
    lines = [line.split() for line in res.stdout.splitlines()]
    assert res.returncode == 0 and [l[0] for l in lines] == ["200"] * 5, (res.stdout, res.stderr)
    assert len({l[1] for l in lines}) == 1, "curl should have used one client connection"

    seen = origin.wait_requests(marker, count=5)
    conns = {r["conn"] for r in seen}
    assert len(conns) == 1, f"upstream connections used: {conns} (expected one reused connection)"

    flows = flows_from(tollgate, int(lines[0][1]), count=5)
    assert [field(f, "tollgate.upstream_reused") for f in flows[1:]] == [True] * 4, \
        [json.dumps(f.get("tollgate")) for f in flows]


KEEP_ALIVE_CLIENT = """
import http.client, sys, time
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=10)
for i, path in enumerate(sys.argv[3:]):
    if i: time.sleep(float(sys.argv[2]))
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    print(resp.status, len(body), conn.sock.getsockname()[1], flush=True)
"""


def keep_alive_client(*paths, pause=0.6):
    """argv of a client that GETs `paths` from the origin on one connection, `pause` s apart,
    printing status, body length and its local port for each."""
    return ["python3", "-c", KEEP_ALIVE_CLIENT, ORIGIN_IP, str(pause), *paths]


def test_a_kept_upstream_the_server_closed_is_replaced(testbed, origin, tollgate, marker):
    # The upstream stays with its client between requests; the origin hangs up on it while
    # the client is idle, and the client's next request must get a fresh one, not an error.
    res = testbed.run_in(testbed.worker, keep_alive_client(f"/idle-close/100?{marker}-0", f"/1k?{marker}-1"), timeout=30)
    lines = [line.split() for line in res.stdout.splitlines()]
    assert res.returncode == 0 and [l[:2] for l in lines] == [["200", "100"], ["200", "1024"]], (res.stdout, res.stderr)
    assert lines[0][2] == lines[1][2], "the client should have kept its connection"
    seen = origin.wait_requests(marker, count=2)
    assert len({r["conn"] for r in seen}) == 2, f"the closed upstream was used again: {seen}"


def test_an_upstream_outlives_its_client_in_the_pool(testbed, origin, tollgates, marker):
    # Two clients one after the other: the first one's upstream, kept while it was connected,
    # goes to the pool when it leaves, and the second client's request reuses it (the pool
    # hands out the most recently parked connection first). One worker: pools are per loop.
    tollgate = tollgates.get({"workers": 1})
    ports = []
    for i in range(2):
        res = testbed.run_in(testbed.worker, keep_alive_client(f"/1k?{marker}-{i}"), timeout=30)
        assert res.returncode == 0 and res.stdout.split()[:2] == ["200", "1024"], (res.stdout, res.stderr)
        ports.append(int(res.stdout.split()[2]))
    seen = origin.wait_requests(marker, count=2)
    assert len({r["conn"] for r in seen}) == 1, f"upstream connections used: {seen}"
    assert field(flows_from(tollgate, ports[1])[0], "tollgate.upstream_reused") is True


def test_a_kept_upstream_is_closed_after_upstream_idle_while_its_client_idles(testbed, origin, tollgates, marker):
    # upstream_idle (1 s) shorter than the client's idle timeout (10 s): the connection the
    # client keeps is closed once it has idled 1 s, and the client's next request gets another.
    tollgate = tollgates.get({"workers": 1, "timeouts": {"upstream_idle": "1s", "idle": "10s"}})
    res = testbed.run_in(testbed.worker, keep_alive_client(f"/1k?{marker}-0", f"/1k?{marker}-1", pause=2.5), timeout=30)
    lines = [line.split() for line in res.stdout.splitlines()]
    assert res.returncode == 0 and [l[:2] for l in lines] == [["200", "1024"]] * 2, (res.stdout, res.stderr)
    assert lines[0][2] == lines[1][2], "the client should have kept its connection"
    first, second = origin.wait_requests(marker, count=2)
    assert first["conn"] != second["conn"], "the expired upstream was used again"
    closed = [r for r in origin.records() if r["event"] == "close" and r["conn"] == first["conn"]]
    assert closed and closed[0]["time"] - first["time"] < 2.0, f"kept upstream not closed after upstream_idle: {closed}"


def test_an_idle_clients_upstream_goes_to_the_pool_after_a_second(testbed, origin, tollgates, marker):
    # Client A makes a request and idles on its connection; 1.5 s later client B's request
    # finds A's upstream in the pool: idle clients hold no upstream beyond the pool's bound.
    tollgate = tollgates.get({"workers": 1})
    # A's second request comes well after B's, so B cannot lose the pooled connection to it
    # even on a loaded machine.
    a = testbed.popen_in(testbed.worker, keep_alive_client(f"/1k?{marker}-a0", f"/1k?{marker}-a1", pause=5),
                         stdout=subprocess.PIPE, text=True)
    try:
        origin.wait_requests(f"{marker}-a0")
        time.sleep(1.5)
        res = testbed.run_in(testbed.worker, keep_alive_client(f"/1k?{marker}-b"), timeout=30)
        assert res.returncode == 0 and res.stdout.split()[:2] == ["200", "1024"], (res.stdout, res.stderr)
        out, _ = a.communicate(timeout=30)
    finally:
        if a.poll() is None:
            a.kill()
    assert a.returncode == 0 and [l.split()[:2] for l in out.splitlines()] == [["200", "1024"]] * 2, out
    conn = {r["target"].split("?")[1]: r["conn"] for r in origin.requests(marker)}
    assert conn[f"{marker}-b"] == conn[f"{marker}-a0"], f"B did not get A's idle upstream from the pool: {conn}"


def test_pipelined_requests_are_answered_in_order(testbed, origin, tollgate, marker):
    sizes = [111, 22222, 3333]
    burst = (request("GET", f"/bytes/{sizes[0]}?{marker}-0", ORIGIN_IP)
             + request("GET", f"/chunked/{sizes[1]}?{marker}-1", ORIGIN_IP)
             + request("GET", f"/bytes/{sizes[2]}?{marker}-2", ORIGIN_IP))
    with worker_client(testbed) as c:
        c.send(burst)
        bodies = [c.read_response().body for _ in sizes]
        port = c.sock.getsockname()[1]
    assert [len(b) for b in bodies] == sizes
    assert all(b == pattern(0, n) for b, n in zip(bodies, sizes))
    flows = flows_from(tollgate, port, count=3)
    assert [field(f, "url.full").rsplit("-", 1)[1] for f in flows] == ["0", "1", "2"]


def test_head_and_bodiless_responses_keep_the_connection_usable(testbed, origin, tollgate, marker):
    with worker_client(testbed) as c:
        c.send(request("HEAD", f"/bytes/5000?{marker}", ORIGIN_IP))
        head = c.read_response(method="HEAD")
        assert head.status == 200 and head.header("content-length") == "5000" and head.body == b""
        for status in (204, 304):
            c.send(request("GET", f"/status/{status}?{marker}", ORIGIN_IP))
            assert c.read_response().status == status
        c.send(request("GET", f"/1k?{marker}", ORIGIN_IP))
        last = c.read_response()
    assert last.status == 200 and last.body == pattern(0, 1024), "a bodiless response desynchronised the stream"


def test_websocket_echo_through_upgrade(testbed, origin, tollgate, marker):
    with worker_client(testbed) as c:
        resp, accept = c.ws_handshake(ORIGIN_IP, path=f"/ws?{marker}")
        assert resp.status == 101, resp
        assert resp.header("sec-websocket-accept") == accept
        c.ws_send(0x1, b"hello through tollgate")
        assert c.ws_recv() == (0x1, b"hello through tollgate")
        big = pattern(7, 70000)
        c.ws_send(0x2, big)
        assert c.ws_recv() == (0x2, big)
        c.ws_send(0x8, (1000).to_bytes(2, "big"))
        assert c.ws_recv()[0] == 0x8
        port = c.sock.getsockname()[1]
    # The upgrade request is logged as a request, and the tunnel after it, once closed, as a
    # tunnel carrying the request's connection fields and the frames' bytes.
    [flow] = flows_from(tollgate, port, extra=lambda r: field(r, "http.response.status_code", None) == 101)
    assert_flow(flow, {"event.action": "http_request", "network.protocol": "websocket",
                       "tollgate.mode": "transparent", "url.full": f"http://{ORIGIN_IP}/ws?{marker}"},
                required=HTTP_FIELDS)
    [tunnel] = flows_from(tollgate, port, extra=lambda r: field(r, "event.action", None) == "tunnel")
    assert_flow(tunnel, {"network.protocol": "websocket", "tollgate.mode": "transparent",
                         "destination.ip": ORIGIN_IP, "url.full": f"http://{ORIGIN_IP}/ws?{marker}"},
                required=COMMON_FIELDS)
    assert field(tunnel, "source.bytes", 0) > 70000 and field(tunnel, "destination.bytes", 0) > 70000, tunnel


def test_uploads_stream_with_content_length_and_chunked(testbed, origin, tollgate, marker):
    data = pattern(3, 3_000_017)
    src = testbed.tmp / f"{marker}.bin"
    src.write_bytes(data)
    want = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # -T sends Content-Length and Expect: 100-continue (the origin answers 100 first).
    res = curl(testbed, "-T", str(src), "-X", "POST", f"http://{ORIGIN_IP}/upload?{marker}-cl")
    assert res.status == 200 and json.loads(res.body) == want, res
    [flow] = flows_from(tollgate, res.local_port)
    assert_flow(flow, {"http.request.method": "POST", "http.request.body.bytes": len(data)})
    # With -T - curl streams stdin chunked.
    res = curl(testbed, "-T", "-", "-X", "POST", "-H", "Expect:", f"http://{ORIGIN_IP}/upload?{marker}-te",
               stdin_file=src)
    assert res.status == 200 and json.loads(res.body) == want, res


def test_raw_tcp_that_is_not_http_is_relayed_to_the_original_destination(testbed, origin, tollgate, marker):
    """A protocol that is neither HTTP nor TLS (here an SSH-style banner) is relayed as bytes."""
    hello = f"SSH-2.0-tollgate-test-{marker}\r\n".encode() + bytes(range(256))
    with worker_client(testbed, host=ECHO_IP, port=443) as c:
        c.send(hello)
        echoed = b""
        while len(echoed) < len(hello):
            data = c.sock.recv(65536)
            if not data:
                break
            echoed += data
        port = c.sock.getsockname()[1]
    assert echoed == hello, f"relay returned {echoed[:80]!r}"
    [flow] = flows_from(tollgate, port)
    assert_flow(flow, {"event.action": "tcp_relay", "destination.ip": ECHO_IP, "destination.port": 443,
                       "network.protocol": "tcp", "tollgate.mode": "transparent"}, required=COMMON_FIELDS)


def test_healthz_answers_ok(tollgate):
    assert tollgate.healthz() == (200, "ok\n")
