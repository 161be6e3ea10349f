"""Issue 2: request-smuggling ambiguities, size limits and upstream failures.

Every refused request must get Tollgate's own JSON error with the documented
status, must never reach the origin, and must leave a flow record.
"""

import select
import time

import pytest

from helpers import (ERROR_FIELDS, HTTP_FIELDS, assert_flow, assert_generated_error, assert_not_forwarded,
                     field, flows_from, worker_client)
from origin import pattern
from testbed import EXPLICIT_PORT, GATEWAY_WORKER_IP, ORIGIN2_IP, ORIGIN_IP, SILENT_IP


def _head(marker, *headers, method="POST", target=None):
    target = target or f"/upload?{marker}"
    return (f"{method} {target} HTTP/1.1\r\nHost: {ORIGIN_IP}\r\n".encode()
            + b"".join(h + b"\r\n" for h in headers) + b"\r\n")


def _smuggled(marker):
    """A second request hidden in the body: it must never reach the origin either."""
    return f"GET /smuggled?{marker} HTTP/1.1\r\nHost: {ORIGIN_IP}\r\n\r\n".encode()


# Each case: (id, request bytes built from the marker). All expect 400 bad_request.
BAD_REQUESTS = [
    ("content-length-and-transfer-encoding", lambda m: _head(
        m, b"Content-Length: 4", b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + _smuggled(m)),
    ("transfer-encoding-and-content-length", lambda m: _head(
        m, b"Transfer-Encoding: chunked", b"Content-Length: 40") + b"0\r\n\r\n" + _smuggled(m)),
    ("differing-content-lengths", lambda m: _head(
        m, b"Content-Length: 5", b"Content-Length: 40") + b"hello" + _smuggled(m)),
    ("content-length-list", lambda m: _head(m, b"Content-Length: 5, 40") + b"hello" + _smuggled(m)),
    ("te-gzip-then-chunked", lambda m: _head(
        m, b"Transfer-Encoding: gzip, chunked") + b"0\r\n\r\n" + _smuggled(m)),
    ("te-chunked-then-gzip", lambda m: _head(
        m, b"Transfer-Encoding: chunked, gzip") + b"0\r\n\r\n" + _smuggled(m)),
    ("te-chunked-twice", lambda m: _head(
        m, b"Transfer-Encoding: chunked", b"Transfer-Encoding: chunked") + b"0\r\n\r\n" + _smuggled(m)),
    ("te-obfuscated", lambda m: _head(m, b"Transfer-Encoding: xchunked") + b"0\r\n\r\n" + _smuggled(m)),
    ("chunk-size-not-hex", lambda m: _head(
        m, b"Transfer-Encoding: chunked") + b"zz\r\nhello\r\n0\r\n\r\n" + _smuggled(m)),
    ("chunk-size-0x-prefix", lambda m: _head(
        m, b"Transfer-Encoding: chunked") + b"0x5\r\nhello\r\n0\r\n\r\n" + _smuggled(m)),
    ("chunk-size-overflow", lambda m: _head(
        m, b"Transfer-Encoding: chunked") + b"10000000000000005\r\nhello\r\n0\r\n\r\n" + _smuggled(m)),
    ("chunk-size-negative", lambda m: _head(
        m, b"Transfer-Encoding: chunked") + b"-5\r\nhello\r\n0\r\n\r\n" + _smuggled(m)),
    ("whitespace-before-colon", lambda m: _head(m, b"X-Test : yes", method="GET", target=f"/1k?{m}")),
    ("whitespace-before-colon-content-length", lambda m: _head(
        m, b"Content-Length : 5") + b"hello" + _smuggled(m)),
    ("obs-fold", lambda m: _head(m, b"X-Test: first", b" folded", method="GET", target=f"/1k?{m}")),
    ("nul-in-header-value", lambda m: _head(m, b"X-Test: a\x00b", method="GET", target=f"/1k?{m}")),
    ("cr-in-header-value", lambda m: _head(m, b"X-Test: a\rb", method="GET", target=f"/1k?{m}")),
    ("content-length-not-a-number", lambda m: _head(m, b"Content-Length: 5x") + b"hello"),
]


@pytest.mark.parametrize("case", [c[1] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_ambiguous_request_is_refused_with_400_and_not_forwarded(testbed, origin, tollgate, marker, case):
    with worker_client(testbed) as c:
        c.send(case(marker))
        resp = c.read_response()
        port = c.sock.getsockname()[1]
    assert_generated_error(resp, 400, "bad_request")
    assert_not_forwarded(origin, marker)
    [flow] = flows_from(tollgate, port)
    assert_flow(flow, {"http.response.status_code": 400, "error.type": "bad_request",
                       "tollgate.mode": "transparent", "destination.ip": ORIGIN_IP}, required=ERROR_FIELDS)


OVERSIZED = [
    ("request-line-too-long", 414, "uri_too_long",
     lambda m: f"GET /1k?{m}&pad={'a' * 9000} HTTP/1.1\r\nHost: {ORIGIN_IP}\r\n\r\n".encode()),
    ("one-huge-header", 431, "header_too_large",
     lambda m: _head(m, b"X-Big: " + b"a" * 70000, method="GET", target=f"/1k?{m}")),
    ("header-block-too-large", 431, "header_too_large",
     lambda m: _head(m, *[b"X-Pad-%d: %s" % (i, b"b" * 900) for i in range(80)], method="GET",
                     target=f"/1k?{m}")),
    ("too-many-headers", 431, "header_too_large",
     lambda m: _head(m, *[b"X-N-%d: 1" % i for i in range(101)], method="GET", target=f"/1k?{m}")),
]


@pytest.mark.parametrize("status,error_type,build", [c[1:] for c in OVERSIZED], ids=[c[0] for c in OVERSIZED])
def test_oversized_request_head_gets_its_status(testbed, origin, tollgate, marker, status, error_type, build):
    with worker_client(testbed) as c:
        c.send(build(marker))
        resp = c.read_response()
        port = c.sock.getsockname()[1]
    assert_generated_error(resp, status, error_type)
    assert_not_forwarded(origin, marker)
    [flow] = flows_from(tollgate, port)
    assert_flow(flow, {"http.response.status_code": status, "error.type": error_type}, required=ERROR_FIELDS)


def test_limits_allow_a_head_just_inside_them(testbed, origin, tollgate, marker):
    """100 header fields and a long-but-legal request line still pass."""
    headers = [b"X-N-%d: 1" % i for i in range(99)]  # + Host = 100
    target = f"/1k?{marker}&pad={'a' * 7000}"
    with worker_client(testbed) as c:
        c.send(_head(marker, *headers, method="GET", target=target))
        resp = c.read_response()
    assert resp.status == 200 and resp.body == pattern(0, 1024), resp


# -- configured body limit and upstream failures (one daemon config) ----------
LIMITED = {"limits": {"body_bytes": 1048576}, "timeouts": {"response": "2s", "connect": "3s"}}
PROXY = (GATEWAY_WORKER_IP, EXPLICIT_PORT)


@pytest.fixture
def limited(tollgates):
    return tollgates.get(LIMITED)


def test_body_over_the_configured_limit_gets_413_and_is_not_forwarded(testbed, origin, limited, marker):
    with worker_client(testbed) as c:
        # Only the head: the refusal must come from Content-Length alone.
        c.send(_head(marker, b"Content-Length: 2000000"))
        resp = c.read_response()
        port = c.sock.getsockname()[1]
    assert_generated_error(resp, 413, "body_too_large")
    assert_not_forwarded(origin, marker)
    [flow] = flows_from(limited, port)
    assert_flow(flow, {"http.response.status_code": 413, "error.type": "body_too_large"}, required=ERROR_FIELDS)


def test_chunked_body_over_the_limit_is_cut_off_with_413(testbed, origin, limited, marker):
    with worker_client(testbed) as c:
        c.send(_head(marker, b"Transfer-Encoding: chunked"))
        piece = pattern(0, 65536)
        c.sock.settimeout(2)
        try:
            for _ in range(40):  # 2.5 MB against a 1 MB limit; stop once Tollgate answers
                if select.select([c.sock], [], [], 0)[0]:
                    break
                c.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # Tollgate stopped reading or closed: its answer should be waiting
        c.sock.settimeout(10)
        resp = c.read_response()
    assert_generated_error(resp, 413, "body_too_large")
    time.sleep(0.3)
    completed = [r for r in origin.records() if r["event"] == "body"
                 and any(q["conn"] == r["conn"] and q["seq"] == r["seq"] for q in origin.requests(marker))]
    assert not completed, f"the origin received the whole over-limit body: {completed}"


def test_body_within_the_limit_passes(testbed, origin, limited, marker):
    with worker_client(testbed) as c:
        c.send(_head(marker, b"Content-Length: 1000000") + pattern(0, 1000000))
        resp = c.read_response()
    assert resp.status == 200 and resp.json()["bytes"] == 1000000, resp


@pytest.mark.parametrize("via", ["transparent", "explicit"])
def test_refused_upstream_gets_502_json(testbed, origin, limited, marker, via):
    if via == "transparent":
        client = worker_client(testbed, host=ORIGIN2_IP, port=80)  # nothing listens there
        target, dest = f"/1k?{marker}", (ORIGIN2_IP, 80)
    else:
        client = worker_client(testbed, host=PROXY[0], port=PROXY[1])
        target, dest = f"http://{ORIGIN_IP}:81/1k?{marker}", (ORIGIN_IP, 81)
    with client as c:
        c.send(f"GET {target} HTTP/1.1\r\nHost: {dest[0]}:{dest[1]}\r\n\r\n".encode())
        resp = c.read_response()
        port = c.sock.getsockname()[1]
    assert_generated_error(resp, 502, "upstream_connect_failed")
    # Source ports get reused within one daemon's lifetime: pick this request's record.
    [flow] = flows_from(limited, port, extra=lambda r: marker in field(r, "url.full", ""))
    assert_flow(flow, {"http.response.status_code": 502, "error.type": "upstream_connect_failed",
                       "destination.ip": dest[0], "destination.port": dest[1], "tollgate.mode": via},
                required=HTTP_FIELDS + ("error.type", "error.message"))


@pytest.mark.parametrize("via", ["transparent", "explicit"])
def test_silent_upstream_gets_504_json_after_the_response_timeout(testbed, origin, limited, marker, via):
    if via == "transparent":
        client = worker_client(testbed, host=SILENT_IP, port=80, timeout=30)
        target = f"/1k?{marker}"
    else:
        client = worker_client(testbed, host=PROXY[0], port=PROXY[1], timeout=30)
        target = f"http://{SILENT_IP}/1k?{marker}"
    with client as c:
        started = time.monotonic()
        c.send(f"GET {target} HTTP/1.1\r\nHost: {SILENT_IP}\r\n\r\n".encode())
        resp = c.read_response()
        elapsed = time.monotonic() - started
        port = c.sock.getsockname()[1]
    assert_generated_error(resp, 504, "upstream_timeout")
    assert 1.5 <= elapsed <= 10, f"504 after {elapsed:.1f}s; timeouts.response is 2s"
    assert origin.mentions(marker), "the request should have reached the silent upstream"
    [flow] = flows_from(limited, port)
    assert_flow(flow, {"http.response.status_code": 504, "error.type": "upstream_timeout",
                       "destination.ip": SILENT_IP, "tollgate.mode": via},
                required=HTTP_FIELDS + ("error.type", "error.message"))
