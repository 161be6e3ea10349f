"""Issue 2: bodies stream through with bounded memory, whatever the speeds."""

import functools
import json
import socket
import time

from helpers import assert_flow, flows_from, worker_client
from origin import iter_pattern, pattern, pattern_sha256
from rawhttp import request
from testbed import ORIGIN_IP, RssSampler

SIZE = 200 * 1024 * 1024
RSS_LIMIT_KB = 64 * 1024


@functools.lru_cache(maxsize=None)
def _digest(n):
    return pattern_sha256(n)


def _curl_to_sha256(testbed, *args):
    """curl in the worker piped into sha256sum; returns (status, local_port, size, digest, stderr)."""
    cmd = ("set -o pipefail; curl -sS -m 60 -w '%{stderr}%{http_code} %{local_port} %{size_download}\\n' "
           + " ".join(args) + " | sha256sum")
    res = testbed.run_in(testbed.worker, ["bash", "-c", cmd], timeout=180)
    assert res.returncode == 0, f"curl failed ({res.returncode}): {res.stderr}"
    status, port, size = res.stderr.strip().splitlines()[-1].split()
    return int(status), int(port), int(size), res.stdout.split()[0], res.stderr


def test_200mb_download_streams_with_rss_under_64mb(testbed, origin, tollgate, marker):
    url = f"http://{ORIGIN_IP}/bytes/{SIZE}?{marker}"
    with RssSampler(tollgate.pid) as rss:
        status, port, size, digest, err = _curl_to_sha256(testbed, f"'{url}'")
    assert status == 200 and size == SIZE, (status, size, err)
    assert digest == _digest(SIZE), "downloaded bytes differ from the origin's (same length, other content)"
    assert rss.max_kb < RSS_LIMIT_KB, f"tollgate RSS peaked at {rss.max_kb} KiB during a 200 MB download"
    [flow] = flows_from(tollgate, port, timeout=10)
    assert_flow(flow, {"http.response.status_code": 200, "http.response.body.bytes": SIZE})


def test_200mb_upload_streams_with_rss_under_64mb(testbed, origin, tollgate, marker):
    src = testbed.tmp / f"upload-{marker}.bin"
    with open(src, "wb") as f:
        for piece in iter_pattern(SIZE, 1 << 20):
            f.write(piece)
    out = testbed.tmp / f"upload-{marker}.json"
    try:
        with RssSampler(tollgate.pid) as rss:
            res = testbed.run_in(testbed.worker, [
                "curl", "-sS", "-m", "60", "-T", str(src), "-X", "POST", "-o", str(out),
                "-w", "%{http_code} %{local_port} %{size_upload}", f"http://{ORIGIN_IP}/upload?{marker}"], timeout=180)
        status, port, sent = res.stdout.split()
        assert res.returncode == 0 and int(status) == 200, \
            f"curl rc={res.returncode} status={status} uploaded={sent}: {res.stderr}"
        assert json.loads(out.read_text()) == {"bytes": SIZE, "sha256": _digest(SIZE)}
    finally:
        src.unlink(missing_ok=True)
    assert rss.max_kb < RSS_LIMIT_KB, f"tollgate RSS peaked at {rss.max_kb} KiB during a 200 MB upload"
    [flow] = flows_from(tollgate, int(port), timeout=10)
    assert_flow(flow, {"http.request.method": "POST", "http.request.body.bytes": SIZE,
                       "http.response.status_code": 200})


def test_slow_reader_does_not_make_tollgate_buffer_the_body(testbed, origin, tollgate, marker):
    """Backpressure: a client reading ~640 KB/s of a 200 MB body must not let
    Tollgate pull the body from the origin at full speed into its own memory."""
    sock = testbed.socket_in(testbed.worker)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.settimeout(10)
    sock.connect((ORIGIN_IP, 80))
    baseline = tollgate.rss_kb()
    read = 0
    try:
        with RssSampler(tollgate.pid) as rss:
            sock.sendall(request("GET", f"/bytes/{SIZE}?{marker}", ORIGIN_IP))
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                data = sock.recv(65536)
                assert data, "connection closed early"
                read += len(data)
                time.sleep(0.1)
    finally:
        sock.close()
    growth = rss.max_kb - baseline
    assert growth < 8 * 1024, f"tollgate RSS grew by {growth} KiB (from {baseline}) while the client read {read} bytes"

    # The origin can only have sent what the client read plus what socket buffers hold.
    [req] = origin.requests(marker)
    try:
        response = _wait_response_record(origin, req["conn"], req["seq"])
    except TimeoutError:
        raise AssertionError("tollgate kept the upstream response going after the client left mid-response")
    assert response["sent"] < read + 48 * 1024 * 1024, \
        f"origin sent {response['sent']} bytes while the client read {read}: Tollgate did not apply backpressure"


def _wait_response_record(origin, conn, seq, timeout=10.0):
    """The origin's record of how many bytes it sent for one request (written when it stops)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in origin.records():
            if r["event"] == "response" and r["conn"] == conn and r["seq"] == seq:
                return r
        time.sleep(0.1)
    raise TimeoutError


def test_slow_response_reaches_the_client_as_it_trickles(testbed, origin, tollgate, marker):
    """Response bytes are forwarded as they arrive, not when the body is complete."""
    with worker_client(testbed) as c:
        started = time.monotonic()
        c.send(request("GET", f"/slow/20000?chunk=1000&ms=100&{marker}", ORIGIN_IP))
        c.read_head()
        first = c.sock.recv(65536) if not c.buf else bytes(c.buf)
        first_at = time.monotonic() - started
    assert first, "no body bytes arrived"
    assert first_at < 1.0, f"first body bytes after {first_at:.2f}s: the 2 s body was buffered"
    assert first == pattern(0, len(first))
