"""Issue 2: loops, graceful SIGTERM drain, and configuration errors."""

import re
import signal
import socket
import subprocess
import time

import pytest

from helpers import COMMON_FIELDS, assert_flow, assert_generated_error, assert_not_forwarded, flows_from, worker_client
from origin import pattern
from rawhttp import Closed
from testbed import (EXPLICIT_PORT, GATEWAY_WORKER_IP, ORIGIN_IP, REPO, TRANSPARENT_PORT, tollgate_binary)


@pytest.mark.parametrize("via", ["transparent-listener-direct", "explicit-to-itself"])
def test_connection_to_tollgates_own_listener_is_refused(testbed, origin, tollgate, marker, via):
    if via == "transparent-listener-direct":
        # Not redirected, so the original destination is the listener itself.
        client = worker_client(testbed, host=GATEWAY_WORKER_IP, port=TRANSPARENT_PORT)
        req = f"GET /1k?{marker} HTTP/1.1\r\nHost: {GATEWAY_WORKER_IP}:{TRANSPARENT_PORT}\r\n\r\n"
    else:
        client = worker_client(testbed, host=GATEWAY_WORKER_IP, port=EXPLICIT_PORT)
        req = (f"GET http://{GATEWAY_WORKER_IP}:{EXPLICIT_PORT}/1k?{marker} HTTP/1.1\r\n"
               f"Host: {GATEWAY_WORKER_IP}:{EXPLICIT_PORT}\r\n\r\n")
    with client as c:
        port = c.sock.getsockname()[1]
        try:
            c.send(req.encode())
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            resp = c.read_response()
        except (Closed, ConnectionResetError):
            resp = None  # refused by closing: allowed by the contract
    if resp is not None:
        assert_generated_error(resp, 508, "loop_detected")
    assert_not_forwarded(origin, marker)
    assert tollgate.healthz()[0] == 200, "tollgate should survive a loop attempt"
    [flow] = flows_from(tollgate, port)
    assert_flow(flow, {"error.type": "loop_detected"}, required=COMMON_FIELDS + ("error.type", "error.message"))


def _refused(testbed, host, port):
    try:
        s = testbed.connect(testbed.worker, (host, port), timeout=1.0)
    except ConnectionRefusedError:
        return True
    except (socket.timeout, OSError):
        return False
    s.close()
    return False


def test_sigterm_lets_an_in_flight_download_finish_and_refuses_new_connections(testbed, origin, tollgates, marker):
    tg = tollgates.fresh({"timeouts": {"drain": "20s"}})
    size = 400000  # 40 pieces of 10 kB every 100 ms: about 4 s
    url = f"http://{ORIGIN_IP}/slow/{size}?chunk=10000&ms=100&{marker}"
    out = testbed.tmp / f"{marker}.body"
    download = testbed.popen_in(testbed.worker, ["curl", "-sS", "-o", out, "-w", "%{http_code} %{local_port}", url],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    origin.wait_requests(marker)
    time.sleep(0.5)
    tg.send_signal(signal.SIGTERM)
    signalled = time.monotonic()

    # New connections to both listeners are refused while the download is still running.
    deadline = signalled + 2.0
    refused = {}
    while time.monotonic() < deadline and len(refused) < 2:
        for name, (host, port) in {"transparent": (ORIGIN_IP, 80),
                                   "explicit": (GATEWAY_WORKER_IP, EXPLICIT_PORT)}.items():
            if name not in refused and _refused(testbed, host, port):
                refused[name] = time.monotonic() - signalled
        time.sleep(0.05)
    still_running = download.poll() is None
    assert set(refused) == {"transparent", "explicit"}, \
        f"new connections still accepted 2 s after SIGTERM (refused: {refused})"
    assert still_running, "the download finished before the refusal could be checked"

    stdout, stderr = download.communicate(timeout=30)
    status, port = stdout.decode().split()
    assert download.returncode == 0 and status == "200", stderr
    assert out.read_bytes() == pattern(0, size), "the drained download was cut short"
    code = tg.proc.wait(timeout=25)
    assert code == 0, f"tollgate exited with {code} after SIGTERM:\n{tg.stderr_tail()}"
    elapsed = time.monotonic() - signalled
    assert elapsed < 20 + 3, f"drain took {elapsed:.1f}s, the deadline is 20s"
    [flow] = [f for f in tg.flows() if f.get("source", {}).get("port") == int(port)]
    assert_flow(flow, {"http.response.status_code": 200, "http.response.body.bytes": size})


def test_sigterm_drain_deadline_cuts_off_transfers_that_take_too_long(testbed, origin, tollgates, marker):
    tg = tollgates.fresh({"timeouts": {"drain": "1s"}})
    url = f"http://{ORIGIN_IP}/slow/1000000?chunk=1000&ms=100&{marker}"  # would take 100 s
    download = testbed.popen_in(testbed.worker, ["curl", "-sS", "-o", "/dev/null", url],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    origin.wait_requests(marker)
    tg.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = tg.proc.wait(timeout=15)
    assert code == 0, f"exit code {code} after SIGTERM:\n{tg.stderr_tail()}"
    assert time.monotonic() - started < 6, "the drain deadline (1s) was not enforced"
    assert download.wait(timeout=10) != 0, "the cut-off download should fail, not look complete"


# -- configuration errors --------------------------------------------------------
def _config_text(testbed, extra):
    return (
        "listen:\n"
        "  transparent: [\"127.0.0.1:25001\"]\n"
        "  explicit: [\"127.0.0.1:23128\"]\n"
        "  admin: \"127.0.0.1:29901\"\n"
        f"log:\n  file: {testbed.tmp / 'badconfig-flows.ndjson'}\n"
        + extra
    )


BAD_CONFIGS = [
    # (id, text appended after line 6, line number of the offending key)
    ("unknown-top-level-key", "bogus_key: 1\n", 7),
    ("unknown-nested-key", "timeouts:\n  connect: 5s\n  conect: 5s\n", 9),
    ("bad-duration", "timeouts:\n  response: soon\n", 8),
    ("bad-workers", "workers: -3\n", 7),
    ("bad-body-bytes", "limits:\n  header_count: 100\n  body_bytes: lots\n", 9),
]


@pytest.mark.parametrize("extra,line", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_makes_run_exit_nonzero_with_file_and_line(testbed, extra, line):
    path = testbed.tmp / "bad.yaml"
    path.write_text(_config_text(testbed, extra))
    # In the worker namespace, where nothing else listens: a daemon that wrongly
    # starts cannot fail for an unrelated reason (port in use) and pass.
    try:
        res = testbed.run_in(testbed.worker, [tollgate_binary(), "run", "--config", path], timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("tollgate started with an invalid config")
    assert res.returncode != 0
    assert f"{path}:{line}:" in res.stderr, f"stderr does not point at {path}:{line}:\n{res.stderr}"


def test_check_config_reports_file_line_and_column(testbed):
    path = testbed.tmp / "bad-check.yaml"
    path.write_text(_config_text(testbed, "bogus_key: 1\n"))
    res = subprocess.run([tollgate_binary(), "check-config", "--config", path], capture_output=True, text=True,
                         timeout=15)
    assert res.returncode == 1, res
    assert re.search(re.escape(str(path)) + r":7:\d+: ", res.stderr), res.stderr


def test_example_config_passes_check_config():
    path = REPO / "deploy" / "tollgate.example.yaml"
    res = subprocess.run([tollgate_binary(), "check-config", "--config", path], capture_output=True, text=True,
                         timeout=15, cwd=REPO)
    assert res.returncode == 0, res.stderr


def _tunables(pid):
    """The GLIBC_TUNABLES items tollgate started with. glibc before 2.39 splits the variable in
    place while parsing it (its items then read as separate strings in /proc/<pid>/environ),
    later ones leave it whole: both read as the same list."""
    raw = open(f"/proc/{pid}/environ", "rb").read()
    return [item for string in raw.split(b"\0") if b"glibc." in string
            for item in string.decode().removeprefix("GLIBC_TUNABLES=").split(":")]


def test_run_raises_the_allocator_cache_unless_the_operator_set_it(tollgates):
    tg = tollgates.fresh()
    assert "glibc.malloc.tcache_count=256" in _tunables(tg.pid), "tollgate re-executes itself with the larger cache"
    assert tg.healthz()[0] == 200
    tg = tollgates.fresh(env={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.tcache_count=32"})
    assert _tunables(tg.pid) == ["glibc.malloc.arena_max=2", "glibc.malloc.tcache_count=32"], "the operator's setting is kept"
    assert tg.healthz()[0] == 200
    tg = tollgates.fresh(env={"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert _tunables(tg.pid) == ["glibc.malloc.arena_max=2", "glibc.malloc.tcache_count=256"], "other tunables are kept"
    assert tg.healthz()[0] == 200
