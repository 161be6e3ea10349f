"""pytest fixtures for the namespace integration tests.

One test bed and one origin per session. Tollgate instances are shared through
`tollgates`: tests that ask for the same config reuse the running daemon, a
different config stops it and starts a fresh one, so tests with the same
config should sit together.
"""

import json
import os
import secrets
import signal

import pytest

import testbed as tbm


def pytest_configure(config):
    tbm.install_sigterm_cleanup()


@pytest.fixture(scope="session")
def testbed():
    if not tbm.is_root():
        pytest.skip("integration tests need root (network namespaces, nftables)")
    binary = tbm.tollgate_binary()
    if not binary.exists():
        pytest.fail(f"tollgate binary not found at {binary}: build it with `swift build -c release` "
                    "or point TOLLGATE_BIN at it", pytrace=False)
    bed = tbm.Testbed()
    bed.up()
    try:
        yield bed
    finally:
        bed.down()


@pytest.fixture(scope="session")
def origin(testbed):
    return testbed.start_origin()


class TollgateManager:
    """At most one daemon at a time (they share the redirect port)."""

    def __init__(self, bed):
        self.bed = bed
        self.current = None
        self.key = None
        self.count = 0

    def get(self, overrides=None):
        """A running daemon with this config, reusing the current one if it matches."""
        key = json.dumps(overrides or {}, sort_keys=True)
        if self.current is not None and self.key == key and self.current.alive():
            return self.current
        return self._start(overrides, key)

    def fresh(self, overrides=None, env=None):
        """A new daemon the caller owns (e.g. to signal it); not reused afterwards."""
        tg = self._start(overrides, None, env)
        self.key = None
        return tg

    def _start(self, overrides, key, env=None):
        self.stop()
        self.count += 1
        self.current = self.bed.start_tollgate(overrides, name=f"tollgate{self.count}", env=env)
        self.key = key
        return self.current

    def stop(self):
        if self.current is not None:
            self.current.stop(signal.SIGTERM, timeout=10)
            self.current = None
            self.key = None


@pytest.fixture(scope="session")
def tollgates(testbed, origin):
    manager = TollgateManager(testbed)
    try:
        yield manager
    finally:
        manager.stop()


TEST_TIMEOUT = int(os.environ.get("TOLLGATE_TEST_TIMEOUT", "180"))


class TestTimeout(Exception):
    pass


@pytest.fixture(autouse=True)
def _time_limit():
    """Fail (not hang) a test that runs longer than TEST_TIMEOUT seconds."""
    def expire(signum, frame):
        raise TestTimeout(f"test exceeded {TEST_TIMEOUT}s (TOLLGATE_TEST_TIMEOUT)")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(autouse=True)
def _daemon_survives(request):
    """Fail a test after which the shared daemon has died unexpectedly."""
    yield
    manager = request.node.funcargs.get("tollgates") if hasattr(request.node, "funcargs") else None
    if manager is None or manager.current is None or manager.key is None:
        return
    tg = manager.current
    if not tg.alive():
        manager.current = None
        pytest.fail(f"tollgate exited (code {tg.proc.returncode}) during this test; stderr tail:\n"
                    f"{tg.stderr_tail()}", pytrace=False)


@pytest.fixture
def tollgate(tollgates):
    """The daemon with the default test config."""
    return tollgates.get()


@pytest.fixture
def marker():
    """A unique token to put in request targets, so each test finds its own records."""
    return "m" + secrets.token_hex(5)


@pytest.fixture(scope="session")
def world(testbed, origin):
    """HTTPS origins (valid, expired, wrong name, unknown issuer, spliced) and Tollgate's CA."""
    from tlsfixtures import TLSWorld
    return TLSWorld(testbed)
