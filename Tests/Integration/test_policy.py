"""Issue 4: the policy engine through the namespace test bed, with real clients."""

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from helpers import curl, field
from testbed import EXPLICIT_PORT, GATEWAY_WORKER_IP, HERE, ORIGIN_IP, tollgate_binary, wait_until, WORKER2_IP

PROXY = f"http://{GATEWAY_WORKER_IP}:{EXPLICIT_PORT}"
LAB_IP = "10.77.0.10"  # an RFC 1918 origin inside the test bed's internet namespace

WIDE_IP = "10.99.0.4"  # an agent whose rules allow every host: address safety must still hold

AGENTS = """
agents:
  worker-1: { sources: ["10.99.0.2"], groups: [coders] }
  wide-open: { sources: ["10.99.0.4"] }
"""

RULES = """
rules:
  - name: origin-read
    agents: [coders]
    hosts: ["origin.test", "203.0.113.10"]
    methods: [GET, HEAD]
    paths: ["/1k", "/bytes/*", "/slow/*", "/status/*"]
    action: allow
  - name: no-uploads
    agents: ["*"]
    hosts: ["origin.test", "203.0.113.10"]
    paths: ["/upload"]
    action: deny
  - name: echo-headers-trial
    agents: [coders]
    hosts: ["origin.test", "203.0.113.10"]
    paths: ["/echo-headers"]
    action: deny
    mode: report
  - name: pinned
    agents: [coders]
    hosts: ["splice.test"]
    ports: [443]
    action: splice
  - name: anything-goes
    agents: [wide-open]
    action: allow
  - name: lab
    agents: [coders]
    hosts: ["10.77.0.0/24"]
    ports: [80]
    action: allow
    allow_internal: true
"""


@pytest.fixture(scope="module")
def rules_dir(testbed):
    d = testbed.tmp / "rules"
    d.mkdir(exist_ok=True)
    (d / "10-agents.yaml").write_text(AGENTS)
    (d / "50-egress.yaml").write_text(RULES)
    return d


@pytest.fixture(scope="module")
def lab_origin(testbed):
    """An origin on a private address, reachable only through an allow_internal rule."""
    testbed.run_in(testbed.internet, ["ip", "addr", "add", f"{LAB_IP}/24", "dev", testbed.if_internet], check=True)
    testbed.run_in(testbed.worker, ["ip", "addr", "add", f"{WIDE_IP}/24", "dev", testbed.if_worker], check=True)
    testbed.run_in(testbed.gateway, ["ip", "route", "add", "10.77.0.0/24", "via", "198.51.100.2"], check=True)
    return testbed.start_origin(listen=(f"{LAB_IP}:80",), silent=(), echo=(), name="lab")


@pytest.fixture
def tg(tollgates, world, rules_dir, lab_origin):
    return tollgates.get({**world.config(), "rules": str(rules_dir)})


def decision_of(tg, url):
    [record] = tg.wait_flows(lambda r: field(r, "url.full", "") == url)
    return record


def test_allowed_request_passes_with_its_rule_recorded(testbed, tg, marker):
    url = f"http://{ORIGIN_IP}/bytes/100"
    res = curl(testbed, url + f"?{marker}")
    assert res.status == 200 and len(res.body) == 100
    record = decision_of(tg, url + f"?{marker}")
    assert field(record, "tollgate.decision") == "allow"
    assert field(record, "rule.name") == "origin-read"
    assert field(record, "rule.ruleset").endswith("50-egress.yaml")
    assert field(record, "event.reason") == "rule"


def test_denied_request_gets_a_readable_403(testbed, origin, tg, marker):
    res = testbed.curl("-i", "-X", "POST", "--data", "x", f"http://{ORIGIN_IP}/upload?{marker}")
    head, _, body = res.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 ")
    error = json.loads(body)["error"]
    assert error == {"type": "policy_denied", "message": "denied by rule 'no-uploads'", "rule": "no-uploads", "agent": "worker-1"}
    assert b"X-Tollgate-Decision: deny; rule=no-uploads" in head
    assert not origin.mentions(marker)
    record = decision_of(tg, f"http://{ORIGIN_IP}/upload?{marker}")
    assert field(record, "tollgate.decision") == "deny" and field(record, "rule.name") == "no-uploads"


def test_no_matching_rule_is_default_deny(testbed, origin, tg, marker):
    res = curl(testbed, f"http://{ORIGIN_IP}/chunked/10?{marker}")
    assert res.status == 403
    assert json.loads(res.body)["error"]["rule"] == "default_deny"
    assert not origin.mentions(marker)
    assert field(decision_of(tg, f"http://{ORIGIN_IP}/chunked/10?{marker}"), "event.reason") == "default_deny"


def test_report_mode_lets_traffic_through_and_records_it(testbed, tg, marker):
    res = curl(testbed, f"http://{ORIGIN_IP}/echo-headers?{marker}")
    assert res.status == 200
    record = decision_of(tg, f"http://{ORIGIN_IP}/echo-headers?{marker}")
    assert field(record, "tollgate.decision") == "report"
    assert field(record, "rule.name") == "echo-headers-trial"
    assert field(record, "event.reason") == "report:deny"


def test_unknown_source_is_denied(testbed, tg, marker):
    res = curl(testbed, "--interface", WORKER2_IP, f"http://{ORIGIN_IP}/1k?{marker}")
    assert res.status == 403
    assert json.loads(res.body)["error"]["rule"] == "unknown_agent"


def test_tls_denial_is_answered_inside_the_tunnel(testbed, world, tg):
    res = testbed.run_in(testbed.worker, ["curl", "-sS", "--cacert", str(world.tollgate_ca), "https://expired.test/x"], timeout=30)
    assert json.loads(res.stdout)["error"]["rule"] == "default_deny"


def test_splice_rule_relays_untouched(testbed, world, tg):
    res = testbed.run_in(testbed.worker, ["curl", "-sS", "--cacert", str(world.origin_ca), "https://splice.test/x"], timeout=30)
    assert res.returncode == 0 and json.loads(res.stdout)["sni"] == "splice.test", res.stderr
    [record] = tg.wait_flows(lambda r: field(r, "tls.client.server_name", "") == "splice.test" and field(r, "rule.name", "") == "pinned")
    assert field(record, "tollgate.decision") == "splice"


def test_sni_spoofed_splice_is_denied(testbed, world, tg):
    # splice.test resolves to 203.0.113.24; the agent sends its SNI to another address.
    res = testbed.run_in(testbed.worker, ["curl", "-sS", "--cacert", str(world.tollgate_ca), "--resolve",
                                          "splice.test:443:203.0.113.21", "https://splice.test/x"], timeout=30)
    error = json.loads(res.stdout)["error"]
    assert error["type"] == "policy_denied" and "resolves to" in error["message"]


def test_a_host_header_naming_an_allowed_host_does_not_open_another_address(testbed, origin, tg, marker):
    # origin-read allows origin.test by name; 203.0.113.11 is not what origin.test resolves to.
    res = curl(testbed, "-H", "Host: origin.test", f"http://203.0.113.11/1k?{marker}")
    assert res.status == 403
    assert json.loads(res.body)["error"]["message"] == "the destination address is not one the Host name resolves to"
    assert curl(testbed, f"http://origin.test/1k?{marker}").status == 200


@pytest.mark.parametrize("address,klass", [
    ("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.0.9", "private"), ("192.168.7.7", "private"),
    ("100.64.3.3", "cgnat"), ("169.254.169.254", "link_local"), ("224.0.0.251", "multicast"), ("0.0.0.0", "unspecified"),
    ("[::1]", "loopback"), ("[::ffff:10.0.0.1]", "ipv4_mapped"), ("[fe80::1]", "link_local"), ("[fd00::1]", "private"),
    ("[64:ff9b::a00:1]", "ipv4_embedded"), (GATEWAY_WORKER_IP, "tollgate"),
])
def test_internal_addresses_are_denied_by_default(testbed, tg, address, klass):
    res = curl(testbed, "--interface", WIDE_IP, "-x", PROXY, f"http://{address}/x")
    assert res.status == 403, res
    assert klass in json.loads(res.body)["error"]["message"]


def test_allow_internal_rule_opens_exactly_the_named_block(testbed, tg, lab_origin, marker):
    res = curl(testbed, "-x", PROXY, f"http://{LAB_IP}/1k?{marker}")
    assert res.status == 200 and len(res.body) == 1024
    res = curl(testbed, "-x", PROXY, f"http://10.77.1.10/1k?{marker}")
    assert res.status == 403


def test_rule_edits_apply_within_two_seconds_and_downloads_in_flight_finish(testbed, tollgates, world, rules_dir, lab_origin):
    tg = tollgates.fresh({**world.config(), "rules": str(rules_dir)})
    try:
        slow = testbed.popen_in(testbed.worker, ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                                                 f"http://{ORIGIN_IP}/slow/200000?chunk=20000&ms=300"],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(0.5)
        edited = RULES.replace('paths: ["/1k", "/bytes/*", "/slow/*", "/status/*"]', 'paths: ["/bytes/*", "/slow/*", "/status/*"]')
        (rules_dir / "50-egress.yaml").write_text(edited)
        start = time.monotonic()
        wait_until(lambda: curl(testbed, f"http://{ORIGIN_IP}/1k").status == 403, 2.0, 0.1, "the edited rule")
        assert time.monotonic() - start <= 2.0
        out, _ = slow.communicate(timeout=30)
        assert out.split() == ["200", "200000"]

        # A broken edit keeps the previous rules and reports where it is broken.
        (rules_dir / "50-egress.yaml").write_text(edited + "  - name: broken\n    agents: [coders\n")
        def status():
            res = testbed.run_in(testbed.gateway, ["curl", "-sS", "http://127.0.0.1:9901/v1/rules/status"])
            return json.loads(res.stdout)
        wait_until(lambda: status().get("last_error"), 3.0, 0.1, "the reload error")
        assert "50-egress.yaml:" in status()["last_error"]
        assert curl(testbed, f"http://{ORIGIN_IP}/bytes/5").status == 200
        # The next complete write is picked up.
        (rules_dir / "50-egress.yaml").write_text(RULES)
        wait_until(lambda: curl(testbed, f"http://{ORIGIN_IP}/1k").status == 200, 3.0, 0.1, "the repaired rules")
        assert status().get("last_error") is None
    finally:
        (rules_dir / "50-egress.yaml").write_text(RULES)
        tollgates.stop()


def test_check_reports_broken_files_exactly(tmp_path):
    (tmp_path / "10-agents.yaml").write_text(AGENTS)
    (tmp_path / "20-bad.yaml").write_text(
        "rules:\n"
        "  - name: one\n"
        "    agents: [ghosts]\n"
        "    hosts: [\"a*b.example\", \"10.0.0.0/40\"]\n"
        "    action: allow\n"
        "  - name: one\n"
        "    agents: [\"*\"]\n"
        "    hosts: [x.example]\n"
        "    paths: [/a]\n"
        "    action: splice\n"
        "  - name: wide\n"
        "    agents: [\"*\"]\n"
        "    hosts: [\"*.example\"]\n"
        "    action: allow\n")
    (tmp_path / "30-shadowed.yaml").write_text(
        "rules:\n"
        "  - name: wide2\n"
        "    agents: [\"*\"]\n"
        "    action: deny\n"
        "  - name: never\n"
        "    agents: [coders]\n"
        "    hosts: [y.example]\n"
        "    action: allow\n")
    (tmp_path / "40-typo.yaml").write_text("rules:\n  - name: typo\n    agent: [coders]\n    action: allow\n")
    res = subprocess.run([str(tollgate_binary()), "check", "--rules", str(tmp_path)], capture_output=True, text=True)
    assert res.returncode == 1
    d = str(tmp_path)
    assert res.stdout.splitlines() == [
        f"{d}/20-bad.yaml:3:14: unknown agent or group 'ghosts'",
        f"{d}/20-bad.yaml:4:13: bad host 'a*b.example': wildcards are only allowed as a leading '*.'",
        f"{d}/20-bad.yaml:4:28: bad host '10.0.0.0/40': not a valid CIDR",
        f"{d}/20-bad.yaml:6:5: duplicate rule name 'one' (first defined at {d}/20-bad.yaml:2:5)",
        f"{d}/20-bad.yaml:10:13: rule 'one': splice happens before interception, so it cannot have methods or paths",
        f"{d}/40-typo.yaml:2:5: rule 'typo' needs agents (a list, or [\"*\"])",
        f"{d}/40-typo.yaml:3:5: unknown key 'agent' in rule (expected one of: action, agents, allow_internal, hosts, methods, mode, name, paths, ports)",
        f"{d}/30-shadowed.yaml:5:5: warning: rule 'never' can never match: rule 'wide' at {d}/20-bad.yaml:11:5 matches everything it would",
    ]


EXPLAIN_CASES = [
    ("GET", f"http://{ORIGIN_IP}/1k", "allow", "origin-read"),
    ("POST", f"http://{ORIGIN_IP}/upload", "deny", "no-uploads"),
    ("GET", f"http://{ORIGIN_IP}/echo-headers", "report", "echo-headers-trial"),
    ("DELETE", f"http://{ORIGIN_IP}/1k", "deny", None),
    ("GET", f"http://{ORIGIN_IP}/chunked/5", "deny", None),
]


@pytest.mark.parametrize("method,url,verdict,rule", EXPLAIN_CASES)
def test_explain_agrees_with_the_proxy(testbed, tg, rules_dir, method, url, verdict, rule):
    res = subprocess.run([str(tollgate_binary()), "explain", "--rules", str(rules_dir), "--agent", "worker-1",
                          "--method", method, url], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert f"decision: {verdict} " in res.stdout
    if rule:
        assert f"rule:     {rule} at " in res.stdout
    proxied = curl(testbed, "-X", method, url)
    assert (proxied.status == 403) == (verdict == "deny"), (res.stdout, proxied)
    [record] = tg.wait_flows(lambda r: field(r, "url.full", "") == url and field(r, "http.request.method", "") == method
                             and r.get("@timestamp", "") >= "", count=1)
    assert field(record, "tollgate.decision") == verdict
