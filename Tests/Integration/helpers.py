"""Assertions and client shortcuts shared by the integration tests."""

import itertools
import json
import re
import subprocess
import time
from datetime import datetime, timezone

from rawhttp import RawClient
from testbed import ORIGIN_IP, WORKER_IP

# Fields every flow record carries (issue 2, docs/interfaces.md).
COMMON_FIELDS = (
    "@timestamp", "event.duration", "event.action",
    "source.ip", "source.port", "destination.ip", "destination.port",
    "network.protocol", "tollgate.agent", "tollgate.mode",
)
# ...plus these for a request that was parsed as HTTP.
HTTP_FIELDS = COMMON_FIELDS + (
    "url.full", "url.domain", "http.request.method", "http.response.status_code",
    "http.request.body.bytes", "http.response.body.bytes",
)
# ...and for a request Tollgate refused or failed before/while forwarding.
ERROR_FIELDS = COMMON_FIELDS + ("http.response.status_code", "error.type", "error.message")

_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
_RAISE = object()
_ABSENT = object()


def field(record, dotted, default=_RAISE):
    """record["a"]["b"] for "a.b" ("@timestamp" is a top-level key)."""
    node = record
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            if default is _RAISE:
                raise KeyError(dotted)
            return default
        node = node[part]
    return node


def assert_flow(record, expected=None, required=HTTP_FIELDS):
    """Check a flow record has the required fields, sane types and the expected values."""
    missing = [f for f in required if field(record, f, _ABSENT) in (_ABSENT, None)]
    assert not missing, f"flow record lacks {missing}: {json.dumps(record)}"
    ts = record["@timestamp"]
    assert isinstance(ts, str) and _TIMESTAMP.match(ts), f"bad @timestamp {ts!r}"
    when = datetime.strptime(ts.split(".")[0].rstrip("Z"), "%Y-%m-%dT%H:%M:%S").replace(tzinfo=timezone.utc)
    assert abs(when.timestamp() - time.time()) < 600, f"@timestamp {ts} is not now (UTC)"
    duration = field(record, "event.duration")
    assert isinstance(duration, int) and duration >= 0, f"event.duration must be integer ns: {duration!r}"
    for name in ("source.port", "destination.port"):
        assert isinstance(field(record, name), int), f"{name} must be an integer: {json.dumps(record)}"
    for name, value in (expected or {}).items():
        actual = field(record, name, None)
        assert actual == value, f"flow {name} = {actual!r}, expected {value!r}: {json.dumps(record)}"


def flows_from(tg, port, count=1, timeout=5.0, ip=WORKER_IP, extra=None):
    """Flow records whose source is ip:port (waits until `count` exist)."""
    def match(r):
        ok = field(r, "source.port", None) == port and field(r, "source.ip", None) == ip
        return ok and (extra is None or extra(r))
    return tg.wait_flows(match, count=count, timeout=timeout)


def assert_generated_error(resp, status, error_type):
    """A response produced by Tollgate itself: status, JSON error body, not the origin's."""
    assert resp.status == status, f"expected {status} {error_type}, got {resp!r} body={resp.body[:300]!r}"
    assert resp.header("x-origin-conn") is None, f"the {status} came from the origin, not Tollgate: {resp!r}"
    ctype = (resp.header("content-type") or "").split(";")[0].strip().lower()
    assert ctype == "application/json", f"error response Content-Type is {ctype!r}"
    try:
        doc = json.loads(resp.body)
    except ValueError:
        raise AssertionError(f"error body is not JSON: {resp.body[:300]!r}")
    assert isinstance(doc.get("error"), dict), f"error body lacks an error object: {doc}"
    assert doc["error"].get("type") == error_type, f"error.type {doc['error'].get('type')!r} != {error_type!r}"
    assert isinstance(doc["error"].get("message"), str) and doc["error"]["message"], f"no error.message: {doc}"


def assert_not_forwarded(origin, marker, settle=0.3):
    """Nothing carrying marker reached any origin listener."""
    time.sleep(settle)
    seen = origin.mentions(marker)
    assert not seen, f"forwarded upstream although refused: {json.dumps(seen)[:800]}"


# Source ports for worker_client: below the kernel's ephemeral range (32768-60999) and never
# reused within a test run. A port an earlier redirected flow used (its conntrack entry lingers
# in TIME_WAIT for 120 s) makes the gateway's NAT rewrite the source port of the next flow from
# it, and Tollgate then rightly records a port the test is not looking for.
_source_ports = itertools.count(20000)


def worker_client(tb, host=ORIGIN_IP, port=80, timeout=10.0, source=None):
    """A RawClient connected from the worker (redirected to Tollgate for ports 80/443)."""
    sock = tb.socket_in(tb.worker)
    sock.settimeout(timeout)
    local_port = next(_source_ports)
    assert local_port < 32768, "worker_client ran out of reserved source ports"
    sock.bind((source or "0.0.0.0", local_port))
    sock.connect((host, port))
    return RawClient(sock)


class CurlResult:
    def __init__(self, rc, status, body, local_port, stderr):
        self.rc, self.status, self.body, self.local_port, self.stderr = rc, status, body, local_port, stderr

    def __repr__(self):
        return (f"<curl rc={self.rc} status={self.status} port={self.local_port} body={len(self.body)}B "
                f"stderr={self.stderr[-300:]!r}>")


_counter = [0]


def curl(tb, *args, timeout=120, stdin_file=None):
    """Run curl in the worker; body to a file, `-w` gives status and local port.

    With several URLs, status/local_port are lists (one per transfer)."""
    _counter[0] += 1
    out = tb.tmp / f"curl-{_counter[0]}.out"
    argv = ["curl", "-sS", "-o", str(out), "-w", "%{http_code} %{local_port}\\n", *args]
    if stdin_file is not None:
        with open(stdin_file, "rb") as stdin:
            res = tb.run_in(tb.worker, argv, timeout=timeout, stdin=stdin, capture_output=False,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    else:
        res = tb.run_in(tb.worker, argv, timeout=timeout)
    lines = [line.split() for line in res.stdout.splitlines() if line.strip()]
    statuses = [int(l[0]) for l in lines]
    ports = [int(l[1]) for l in lines if len(l) > 1]
    body = out.read_bytes() if out.exists() else b""
    if out.exists():
        out.unlink()
    if len(lines) == 1:
        return CurlResult(res.returncode, statuses[0], body, ports[0] if ports else None, res.stderr)
    return CurlResult(res.returncode, statuses, body, ports, res.stderr)
