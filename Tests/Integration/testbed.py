"""Network-namespace test bed for Tollgate's integration tests (needs root).

Topology, with unique names per run so parallel runs never collide:

    worker (10.99.0.2, .3) --veth-- (10.99.0.1) gateway (198.51.100.1) --veth-- (198.51.100.2) internet
                                                                    (203.0.113.10-.13)

In `internet`, start_origin() serves HTTP on 203.0.113.10:80, a listener that
never answers on 203.0.113.12:80 and 203.0.113.10:8081, and a raw TCP echo on
203.0.113.13:443; nothing listens on 203.0.113.11 (connections are refused).

The worker's default route is the gateway; the gateway forwards and, with an
nftables `redirect`, hands the worker's TCP 80/443 to Tollgate's transparent
listener (:15001). `origin.test` resolves to 203.0.113.10 in worker and gateway
(/etc/netns/<ns>/hosts, bind-mounted by `ip netns exec`).

Everything is torn down even when a test fails: `Testbed.down()` runs from the
context manager, the pytest finalizer and an atexit hook, and a later run
sweeps beds whose owning process died without cleaning up (SIGKILL).

Use:
    with Testbed() as tb:
        origin = tb.start_origin()
        tg = tb.start_tollgate()
        tb.run_in(tb.worker, ["curl", "-s", "http://203.0.113.10/1k"])
"""

import atexit
import contextlib
import copy
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

WORKER_IP = "10.99.0.2"
WORKER2_IP = "10.99.0.3"  # a second worker address that no agent claims
GATEWAY_WORKER_IP = "10.99.0.1"
GATEWAY_INTERNET_IP = "198.51.100.1"
INTERNET_IP = "198.51.100.2"
ORIGIN_IP = "203.0.113.10"
ORIGIN2_IP = "203.0.113.11"  # nothing listens here: connections are refused
SILENT_IP = "203.0.113.12"  # the default origin accepts here and never answers
ECHO_IP = "203.0.113.13"  # raw TCP echo on :443 (203.0.113.10:443 is the TLS origin's)
TRANSPARENT_PORT = 15001
EXPLICIT_PORT = 3128
ADMIN = "127.0.0.1:9901"

# Markers of live beds, used to sweep the leftovers of runs that were killed.
STATE_DIR = Path("/run/tollgate-testbed")
NAME_RE = re.compile(r"^tg[0-9a-f]{4}-[wgi]$")

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def is_root():
    return os.geteuid() == 0


def tollgate_binary():
    """Path of the daemon under test: $TOLLGATE_BIN or .build/release/tollgate."""
    path = Path(os.environ.get("TOLLGATE_BIN", ".build/release/tollgate"))
    return path if path.is_absolute() else REPO / path


def _sh(argv, input=None):
    """Run a setup command; raise with its stderr when it fails."""
    res = subprocess.run(argv, input=input, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res.stdout


def _proc_start_time(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except OSError:
        return None


def wait_until(predicate, timeout=5.0, interval=0.05, message="condition"):
    """Poll predicate() until it returns something truthy; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


def deep_merge(base, overrides):
    """Return base updated recursively by overrides (a None value deletes the key)."""
    out = copy.deepcopy(base)
    for key, value in (overrides or {}).items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# ---------------------------------------------------------------------------
# YAML: the configs we write are small nested mappings of scalars and lists.
_PLAIN = re.compile(r"^[A-Za-z0-9_./-]+$")
_YAML_SPECIAL = {"true", "false", "yes", "no", "on", "off", "null", "~", "y", "n"}


def _yaml_scalar(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and text.lower() not in _YAML_SPECIAL and not re.match(r"^[0-9.]+$", text):
        return text
    return json.dumps(text)


def to_yaml(mapping, indent=0):
    """Block-style YAML for a dict of dicts / lists of scalars / scalars."""
    pad = "  " * indent
    lines = []
    for key, value in mapping.items():
        if isinstance(value, dict):
            if value:
                lines.append(f"{pad}{key}:")
                lines.append(to_yaml(value, indent + 1))
            else:
                lines.append(f"{pad}{key}: {{}}")
        elif isinstance(value, (list, tuple)):
            lines.append(f"{pad}{key}: [{', '.join(_yaml_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(value)}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
class RssSampler:
    """Samples a process's VmRSS in a background thread; `max_kb` is the peak."""

    def __init__(self, pid, interval=0.02):
        self.pid = pid
        self.interval = interval
        self.samples = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            rss = rss_kb(self.pid)
            if rss is not None:
                self.samples.append(rss)
            self._stop.wait(self.interval)

    @property
    def max_kb(self):
        return max(self.samples) if self.samples else None

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def rss_kb(pid):
    """Resident set size of pid in KiB (None when the process is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


# ---------------------------------------------------------------------------
class OriginProcess:
    """origin.py running in the internet namespace, with its request log."""

    def __init__(self, proc, log_path):
        self.proc = proc
        self.log_path = Path(log_path)

    def records(self):
        if not self.log_path.exists():
            return []
        out = []
        with open(self.log_path) as f:
            for line in f:
                if line.endswith("\n"):
                    out.append(json.loads(line))
        return out

    def requests(self, marker=None):
        """Request records, optionally only those whose target contains marker."""
        return [r for r in self.records()
                if r["event"] == "request" and (marker is None or marker in r["target"])]

    def mentions(self, marker):
        """Every record (request, bad request, silent-listener data) that contains marker."""
        return [r for r in self.records() if marker in json.dumps(r)]

    def wait_requests(self, marker, count=1, timeout=5.0):
        return wait_until(lambda: (lambda r: r if len(r) >= count else None)(self.requests(marker)),
                          timeout, message=f"{count} origin request(s) matching {marker!r}")


class Tollgate:
    """A running `tollgate run` in the gateway namespace."""

    def __init__(self, testbed, proc, config, config_path, log_path, stderr_path):
        self.testbed = testbed
        self.proc = proc
        self.config = config
        self.config_path = config_path
        self.log_path = Path(log_path)
        self.stderr_path = stderr_path

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc.poll() is None

    def rss_kb(self):
        return rss_kb(self.pid)

    def stderr_tail(self, n=40):
        try:
            lines = Path(self.stderr_path).read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def healthz(self):
        """(status code, body) of GET /healthz on the admin listener, via curl in gateway."""
        admin = self.config["listen"]["admin"]
        res = self.testbed.run_in(self.testbed.gateway,
                                  ["curl", "-sS", "-m", "2", "-w", "\n%{http_code}", f"http://{admin}/healthz"],
                                  timeout=10)
        body, _, code = res.stdout.rpartition("\n")
        return int(code or 0), body

    def wait_healthy(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"tollgate exited with {self.proc.returncode} before becoming healthy:\n"
                                   f"{self.stderr_tail()}")
            code, _ = self.healthz()
            if code == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"tollgate not healthy after {timeout}s:\n{self.stderr_tail()}")

    def flows(self):
        """All complete flow records written so far (a torn last line is skipped)."""
        if not self.log_path.exists():
            return []
        out = []
        with open(self.log_path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break
                try:
                    out.append(json.loads(raw))
                except ValueError as exc:
                    raise AssertionError(f"flow log line is not JSON ({exc}): {raw[:300]!r}")
        return out

    def wait_flows(self, predicate, count=1, timeout=5.0):
        """Wait until at least `count` flow records satisfy predicate; return them."""
        def matching():
            found = [r for r in self.flows() if predicate(r)]
            return found if len(found) >= count else None
        try:
            return wait_until(matching, timeout, message=f"{count} flow record(s)")
        except TimeoutError:
            tail = "\n".join(json.dumps(r) for r in self.flows()[-5:])
            raise AssertionError(f"no {count} matching flow record(s) after {timeout}s; last records:\n{tail}")

    def send_signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, sig=signal.SIGTERM, timeout=40.0):
        """Signal the daemon and wait for it; SIGKILL after timeout. Returns the exit code."""
        if self.alive():
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


# ---------------------------------------------------------------------------
class Testbed:
    """worker — gateway — internet namespaces; see the module docstring."""

    def __init__(self, keep_tmp=None):
        self.id = secrets.token_hex(2)
        base = f"tg{self.id}"
        self.worker, self.gateway, self.internet = f"{base}-w", f"{base}-g", f"{base}-i"
        # Interface names (<= 15 chars): <base>-wg in worker faces <base>-gw in gateway,
        # <base>-gi in gateway faces <base>-ig in internet.
        self.if_worker, self.if_gw_worker = f"{base}-wg", f"{base}-gw"
        self.if_gw_internet, self.if_internet = f"{base}-gi", f"{base}-ig"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"tollgate-it-{self.id}-"))
        self.keep_tmp = os.environ.get("TOLLGATE_KEEP_TMP") == "1" if keep_tmp is None else keep_tmp
        self._procs = []
        self._lock = threading.Lock()
        self._up = False
        self._down = False

    # -- lifecycle -------------------------------------------------------------
    def __enter__(self):
        self.up()
        return self

    def __exit__(self, *exc):
        self.down()

    def up(self):
        if not is_root():
            raise PermissionError("the namespace test bed needs root")
        sweep_stale()
        atexit.register(self.down)
        self._write_state()
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        self._up = True
        return self

    def _write_state(self):
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state = {"pid": os.getpid(), "start": _proc_start_time(os.getpid()),
                 "namespaces": [self.worker, self.gateway, self.internet], "tmp": str(self.tmp)}
        (STATE_DIR / f"{self.id}.json").write_text(json.dumps(state))

    def _build(self):
        for ns in (self.worker, self.gateway, self.internet):
            _sh(["ip", "netns", "add", ns])
        _sh(["ip", "link", "add", self.if_worker, "netns", self.worker, "type", "veth",
             "peer", "name", self.if_gw_worker, "netns", self.gateway])
        _sh(["ip", "link", "add", self.if_gw_internet, "netns", self.gateway, "type", "veth",
             "peer", "name", self.if_internet, "netns", self.internet])

        w, g, i = self.worker, self.gateway, self.internet
        batch = [
            (w, f"addr add {WORKER_IP}/24 dev {self.if_worker}"),
            (w, f"addr add {WORKER2_IP}/24 dev {self.if_worker}"),
            (w, f"link set {self.if_worker} up"),
            (w, "link set lo up"),
            (w, f"route add default via {GATEWAY_WORKER_IP}"),
            (g, f"addr add {GATEWAY_WORKER_IP}/24 dev {self.if_gw_worker}"),
            (g, f"addr add {GATEWAY_INTERNET_IP}/24 dev {self.if_gw_internet}"),
            (g, f"link set {self.if_gw_worker} up"),
            (g, f"link set {self.if_gw_internet} up"),
            (g, "link set lo up"),
            (g, f"route add 203.0.113.0/24 via {INTERNET_IP}"),
            (i, f"addr add {INTERNET_IP}/24 dev {self.if_internet}"),
            (i, f"addr add {ORIGIN_IP}/24 dev {self.if_internet}"),
            (i, f"addr add {ORIGIN2_IP}/24 dev {self.if_internet}"),
            (i, f"addr add {SILENT_IP}/24 dev {self.if_internet}"),
            (i, f"addr add {ECHO_IP}/24 dev {self.if_internet}"),
            (i, f"link set {self.if_internet} up"),
            (i, "link set lo up"),
            (i, f"route add 10.99.0.0/24 via {GATEWAY_INTERNET_IP}"),
        ]
        for ns, cmd in batch:
            _sh(["ip", "-n", ns] + cmd.split())
        _sh(["ip", "netns", "exec", g, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _sh(["ip", "netns", "exec", g, "nft", "-f", "-"], input=self.nft_ruleset())
        # Redirected flows from different worker ports share one reply tuple (gateway:15001 ->
        # worker:port). A worker port reused while an earlier flow's conntrack entry lingers in
        # TIME_WAIT (120 s by default) makes NAT rewrite the source port, and tests that find
        # their record by the client's port would miss it: forget finished flows after 1 s.
        # Per namespace, set once the nat table has loaded conntrack.
        _sh(["ip", "netns", "exec", g, "sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"])

        for ns in (w, g):
            d = Path("/etc/netns") / ns
            d.mkdir(parents=True, exist_ok=True)
            (d / "hosts").write_text(f"127.0.0.1 localhost\n::1 localhost\n{ORIGIN_IP} origin.test\n")

    def nft_ruleset(self):
        """The gateway's redirect of worker TCP 80/443 to the transparent listener."""
        return (
            "table ip nat {\n"
            "  chain prerouting {\n"
            "    type nat hook prerouting priority -100; policy accept;\n"
            f"    iifname \"{self.if_gw_worker}\" tcp dport {{ 80, 443 }} redirect to :{TRANSPARENT_PORT}\n"
            "  }\n"
            "}\n"
        )

    def down(self):
        """Kill every process in the bed, delete the namespaces and files. Idempotent."""
        with self._lock:
            if self._down:
                return
            self._down = True
        for proc in self._procs:
            _kill(proc)
        _destroy(self.id, [self.worker, self.gateway, self.internet],
                 None if self.keep_tmp else self.tmp)

    # -- running things ----------------------------------------------------------
    def run_in(self, ns, argv, timeout=60, check=False, text=True, **kw):
        """Run argv inside namespace ns and wait (subprocess.run, output captured)."""
        kw.setdefault("capture_output", True)
        return subprocess.run(["ip", "netns", "exec", ns] + [str(a) for a in argv],
                              timeout=timeout, check=check, text=text, **kw)

    def popen_in(self, ns, argv, **kw):
        """Start argv inside namespace ns; it is killed at teardown.

        `ip netns exec` execs the command in place, so the Popen's pid is the
        command's own pid (signals and /proc/<pid> reach it directly)."""
        kw.setdefault("start_new_session", True)
        proc = subprocess.Popen(["ip", "netns", "exec", ns] + [str(a) for a in argv], **kw)
        self._procs.append(proc)
        return proc

    def socket_in(self, ns, family=socket.AF_INET, type=socket.SOCK_STREAM):
        """A socket created inside namespace ns, usable from any thread afterwards."""
        return in_netns(ns, lambda: socket.socket(family, type))

    def connect(self, ns, addr, timeout=10.0):
        """A TCP connection to addr made from inside namespace ns."""
        sock = self.socket_in(ns)
        sock.settimeout(timeout)
        try:
            sock.connect(addr)
        except BaseException:
            sock.close()
            raise
        return sock

    def curl(self, *args, ns=None, timeout=120):
        """curl from the worker (or ns); returns the CompletedProcess with bytes output."""
        return self.run_in(ns or self.worker, ["curl", "-sS", *args], timeout=timeout, text=False)

    # -- origin --------------------------------------------------------------------
    def start_origin(self, listen=(f"{ORIGIN_IP}:80",), silent=(f"{SILENT_IP}:80", f"{ORIGIN_IP}:8081"),
                     echo=(f"{ECHO_IP}:443",), name="origin"):
        """Start origin.py in the internet namespace and wait until it listens."""
        log = self.tmp / f"{name}.ndjson"
        ready = self.tmp / f"{name}.ready"
        argv = [sys.executable, str(HERE / "origin.py"), "--log", log, "--ready", ready]
        for spec in listen:
            argv += ["--listen", spec]
        for spec in silent:
            argv += ["--silent", spec]
        for spec in echo:
            argv += ["--echo", spec]
        stderr = open(self.tmp / f"{name}.stderr", "wb")
        proc = self.popen_in(self.internet, argv, stdout=subprocess.DEVNULL, stderr=stderr)
        stderr.close()
        try:
            wait_until(lambda: ready.exists() or proc.poll() is not None, 10, message="origin ready")
        except TimeoutError:
            pass
        if proc.poll() is not None or not ready.exists():
            raise RuntimeError(f"origin failed to start:\n{(self.tmp / f'{name}.stderr').read_text()}")
        return OriginProcess(proc, log)

    # -- tollgate --------------------------------------------------------------------
    def tollgate_config(self, overrides=None, name="tollgate"):
        """The test config: both listeners on all gateway addresses, flows to tmp."""
        base = {
            "listen": {
                "transparent": [f"0.0.0.0:{TRANSPARENT_PORT}"],
                "explicit": [f"0.0.0.0:{EXPLICIT_PORT}"],
                "admin": ADMIN,
            },
            "workers": "auto",
            "log": {"file": str(self.tmp / f"{name}-flows.ndjson")},
            "agents": {"worker-1": {"sources": [WORKER_IP]}},
        }
        return deep_merge(base, overrides)

    def write_config(self, config, name="tollgate"):
        path = self.tmp / f"{name}.yaml"
        path.write_text("# generated by Tests/Integration/testbed.py\n" + to_yaml(config) + "\n")
        return path

    def start_tollgate(self, overrides=None, name="tollgate", binary=None, wait=True, env=None):
        """Write a config, run `tollgate run --config` in gateway, wait for /healthz; `env`
        adds to (or replaces in) the test's own environment."""
        binary = Path(binary) if binary else tollgate_binary()
        if not binary.exists():
            raise FileNotFoundError(f"tollgate binary {binary} not found: run `swift build -c release` "
                                    "or set TOLLGATE_BIN")
        config = self.tollgate_config(overrides, name)
        log_path = Path(config["log"]["file"])
        if log_path.exists():
            log_path.unlink()
        config_path = self.write_config(config, name)
        stderr_path = self.tmp / f"{name}.stderr"
        with open(stderr_path, "wb") as err:
            proc = self.popen_in(self.gateway, [binary, "run", "--config", config_path],
                                 stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                 env={**os.environ, **env} if env else None)
        tg = Tollgate(self, proc, config, config_path, log_path, stderr_path)
        if wait:
            try:
                tg.wait_healthy()
            except BaseException:
                tg.stop(signal.SIGKILL, timeout=5)
                raise
        return tg


# ---------------------------------------------------------------------------
def in_netns(ns, fn):
    """Run fn() on a fresh thread that has joined network namespace ns.

    setns(CLONE_NEWNET) changes only the calling thread, so the test process
    itself stays where it is; sockets keep the namespace they were made in."""
    result = {}

    def body():
        try:
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, _CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as exc:  # handed back to the caller
            result["error"] = exc

    t = threading.Thread(target=body, name=f"netns-{ns}")
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _kill(proc, grace=3.0):
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()


def _netns_pids(ns):
    res = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in res.stdout.split()] if res.returncode == 0 else []


def _destroy(bed_id, namespaces, tmp):
    """Kill whatever still runs in the namespaces, delete them and their files."""
    for ns in namespaces:
        for pid in _netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    for ns in namespaces:
        with contextlib.suppress(Exception):
            wait_until(lambda: not _netns_pids(ns), 3, message=f"processes in {ns} to exit")
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        (STATE_DIR / f"{bed_id}.json").unlink()


def sweep_stale():
    """Remove beds whose owning process is gone (a run killed before teardown)."""
    if not STATE_DIR.is_dir():
        return
    for marker in STATE_DIR.glob("*.json"):
        try:
            state = json.loads(marker.read_text())
        except (OSError, ValueError):
            marker.unlink(missing_ok=True)
            continue
        if _proc_start_time(state["pid"]) == state["start"]:
            continue  # still running: another live test run owns it
        names = [n for n in state.get("namespaces", []) if NAME_RE.match(n)]
        _destroy(marker.stem, names, state.get("tmp"))


def _on_sigterm(signum, frame):
    # Turn the first SIGTERM into an exception so context managers and
    # finalizers run; ignore repeats (a process-group kill often sends several),
    # which would otherwise interrupt the teardown itself.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise KeyboardInterrupt(f"signal {signum}")


def install_sigterm_cleanup():
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


if __name__ == "__main__":
    # Manual check: build a bed, print its names, wait for Enter, tear it down.
    with Testbed() as bed:
        print(json.dumps({"worker": bed.worker, "gateway": bed.gateway, "internet": bed.internet,
                          "tmp": str(bed.tmp)}, indent=2))
        try:
            input("test bed up; press Enter to tear down\n")
        except EOFError:
            pass
