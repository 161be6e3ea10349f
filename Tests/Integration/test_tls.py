"""Issue 3: TLS interception in the namespace test bed, with real clients in `worker`."""

import json
import shutil
import subprocess

import pytest

from helpers import field
from testbed import tollgate_binary, WORKER_IP

BODY_1K = bytes(range(256)) * 4


@pytest.fixture
def tg(tollgates, world):
    return tollgates.get(world.config(splice=["splice.test"]))


def peer_certificate(tb, host, cafile, port=443, server_name=None):
    """The certificate a Python client in `worker` sees, as a dict (issuer, subjectAltName)."""
    script = (
        "import json, socket, ssl, sys\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "sni = sys.argv[4]\n"
        "with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10) as raw:\n"
        "    with ctx.wrap_socket(raw, server_hostname=sni) as s:\n"
        "        print(json.dumps(s.getpeercert()))\n"
    )
    res = tb.run_in(tb.worker, ["python3", "-c", script, cafile, host, str(port), server_name or host], timeout=30)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def issuer_cn(cert):
    return dict(x[0] for x in cert["issuer"])["commonName"]


def curl_tls(tb, url, cafile, *extra):
    return tb.run_in(tb.worker, ["curl", "-sS", "--max-time", "20", "--cacert", str(cafile), *extra, url], text=False, timeout=60)


def test_curl_sees_a_tollgate_certificate_and_the_origins_bytes(testbed, world, tg):
    res = curl_tls(testbed, "https://origin.test/bytes/1024", world.tollgate_ca)
    assert res.returncode == 0, res.stderr
    assert res.stdout == BODY_1K
    cert = peer_certificate(testbed, "origin.test", str(world.tollgate_ca))
    assert issuer_cn(cert) == "Tollgate CA"
    assert cert["subjectAltName"] == [["DNS", "origin.test"]] or cert["subjectAltName"] == (("DNS", "origin.test"),)


def test_trusting_only_the_origin_ca_fails_which_proves_interception(testbed, world, tg):
    res = curl_tls(testbed, "https://origin.test/bytes/16", world.origin_ca)
    assert res.returncode == 60, res.stderr


def test_python_requests_and_node_trust_only_the_tollgate_ca(testbed, world, tg):
    script = ("import requests, sys\n"
              "r = requests.get('https://origin.test/bytes/1024', verify=sys.argv[1], timeout=20)\n"
              "sys.stdout.buffer.write(r.content)\n")
    res = testbed.run_in(testbed.worker, ["python3", "-c", script, str(world.tollgate_ca)], text=False, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout == BODY_1K
    if shutil.which("node"):
        js = ("const https=require('https'),fs=require('fs');"
              "https.get('https://origin.test/bytes/1024',{ca:fs.readFileSync(process.argv[1])},r=>{"
              "const c=[];r.on('data',d=>c.push(d));r.on('end',()=>process.stdout.write(Buffer.concat(c)))})"
              ".on('error',e=>{console.error(e.message);process.exit(1)})")
        res = testbed.run_in(testbed.worker, ["node", "-e", js, str(world.tollgate_ca)], text=False, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout == BODY_1K


def test_intercepted_requests_are_recorded_with_tls_fields(testbed, world, tg):
    res = curl_tls(testbed, "https://origin.test/bytes/17", world.tollgate_ca)
    assert res.returncode == 0, res.stderr
    [record] = tg.wait_flows(lambda r: field(r, "url.full", "") == "https://origin.test/bytes/17")
    assert field(record, "tls.version") in ("1.2", "1.3")
    assert field(record, "tls.cipher")
    assert field(record, "tls.established") is True
    assert field(record, "tls.client.server_name") == "origin.test"
    assert field(record, "tollgate.tls") == "intercepted"
    assert field(record, "http.response.status_code") == 200
    assert field(record, "tollgate.agent") == "worker-1"


def test_a_spliced_host_shows_the_origins_own_certificate(testbed, world, tg):
    cert = peer_certificate(testbed, "splice.test", str(world.origin_ca))
    assert issuer_cn(cert) == "Origin CA"
    [record] = tg.wait_flows(lambda r: field(r, "tls.client.server_name", "") == "splice.test")
    assert field(record, "tollgate.tls") == "spliced"
    assert field(record, "event.action") == "tcp_relay"
    assert field(record, "source.bytes") > 0 and field(record, "destination.bytes") > 0


@pytest.mark.parametrize("host,reason", [("expired.test", "expired"), ("wrong.test", "name_mismatch"),
                                         ("unknown.test", "unknown_issuer")])
def test_bad_upstream_certificates_give_502_naming_the_reason(testbed, world, tg, host, reason):
    res = curl_tls(testbed, f"https://{host}/x", world.tollgate_ca, "-w", "\n%{http_code}")
    body, _, code = res.stdout.rpartition(b"\n")
    assert code == b"502", res.stderr
    error = json.loads(body)["error"]
    assert error["type"] == "upstream_certificate_invalid"
    assert reason in error["message"]
    [record] = tg.wait_flows(lambda r: field(r, "url.domain", "") == host)
    assert field(record, "error.type") == "upstream_certificate_invalid"
    assert reason in field(record, "error.message")


def test_no_sni_mints_a_certificate_for_the_ip(testbed, world, tg):
    res = curl_tls(testbed, "https://203.0.113.10/bytes/1024", world.tollgate_ca)
    assert res.returncode == 0, res.stderr
    assert res.stdout == BODY_1K
    # Python sends no SNI for an IP literal and checks the IP SAN instead.
    cert = peer_certificate(testbed, "203.0.113.10", str(world.tollgate_ca))
    assert ["IP Address", "203.0.113.10"] in [list(x) for x in cert["subjectAltName"]]


def test_a_request_sent_with_the_last_handshake_message_is_answered(testbed, world, tg):
    # The client's Finished and its first request in one segment: Tollgate's TLS reads ahead,
    # takes both with the handshake, and no readiness event announces the request.
    script = (
        "import socket, ssl, sys\n"
        "tls_out, tls_in = ssl.MemoryBIO(), ssl.MemoryBIO()\n"
        "tls = ssl.create_default_context(cafile=sys.argv[1]).wrap_bio(tls_in, tls_out, server_hostname='origin.test')\n"
        "def receive(raw):\n"
        "    data = raw.recv(65536)\n"
        "    if not data:\n"
        "        return False\n"
        "    tls_in.write(data)\n"
        "    return True\n"
        "with socket.create_connection(('203.0.113.10', 443), timeout=10) as raw:\n"
        "    while True:\n"
        "        try:\n"
        "            tls.do_handshake()\n"
        "            break\n"
        "        except ssl.SSLWantReadError:\n"
        "            raw.sendall(tls_out.read())\n"
        "            if not receive(raw):\n"
        "                sys.exit('closed during the handshake')\n"
        "    tls.write(b'GET /bytes/1024 HTTP/1.1\\r\\nHost: origin.test\\r\\nConnection: close\\r\\n\\r\\n')\n"
        "    raw.sendall(tls_out.read())\n"
        "    response = b''\n"
        "    while True:\n"
        "        try:\n"
        "            chunk = tls.read(65536)\n"
        "            if not chunk:\n"
        "                break\n"
        "            response += chunk\n"
        "        except ssl.SSLWantReadError:\n"
        "            if not receive(raw):\n"
        "                break\n"
        "        except (ssl.SSLZeroReturnError, ssl.SSLEOFError):\n"
        "            break\n"
        "    sys.stdout.buffer.write(response)\n"
    )
    res = testbed.run_in(testbed.worker, ["python3", "-c", script, str(world.tollgate_ca)], text=False, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith(b"HTTP/1.1 200")
    assert res.stdout.endswith(BODY_1K)


def test_a_client_that_rejects_the_ca_is_a_distinct_record(testbed, world, tg):
    # A name of its own: the daemon is shared, and an earlier test's client rejected
    # origin.test too (this test used to find that record when its own was not yet written).
    res = curl_tls(testbed, "https://reject-ca.test/bytes/1", world.origin_ca, "--resolve", "reject-ca.test:443:203.0.113.10")
    assert res.returncode != 0
    [record] = tg.wait_flows(lambda r: field(r, "event.action", "") == "tls.client_rejected_certificate"
                             and field(r, "tls.client.server_name", "") == "reject-ca.test")
    assert field(record, "tollgate.agent") == "worker-1"
    assert field(record, "tollgate.tls") == "failed"


def test_splice_on_client_reject_learns_from_a_certificate_alert_not_from_a_hang_up(testbed, world, tollgates):
    tg = tollgates.get(world.config(splice_on_client_reject=True))
    # A client that sends its hello, reads our answer and hangs up without an alert: recorded,
    # but interception of that name goes on.
    hang_up = (
        "import socket, ssl, sys\n"
        "out = ssl.MemoryBIO()\n"
        "hello = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), out, server_hostname=sys.argv[1])\n"
        "try:\n"
        "    hello.do_handshake()\n"
        "except ssl.SSLWantReadError:\n"
        "    pass\n"
        "with socket.create_connection(('203.0.113.10', 443), timeout=10) as raw:\n"
        "    raw.sendall(out.read())\n"
        "    raw.settimeout(1)\n"
        "    try:\n"
        "        while raw.recv(65536):\n"
        "            pass\n"
        "    except socket.timeout:\n"
        "        pass\n"
    )
    res = testbed.run_in(testbed.worker, ["python3", "-c", hang_up, "hangup.many.test"], timeout=30)
    assert res.returncode == 0, res.stderr
    tg.wait_flows(lambda r: field(r, "event.action", "") == "tls.client_rejected_certificate"
                  and field(r, "tls.client.server_name", "") == "hangup.many.test")
    cert = peer_certificate(testbed, "203.0.113.10", str(world.tollgate_ca), server_name="hangup.many.test")
    assert issuer_cn(cert) == "Tollgate CA"

    # curl refusing the Tollgate CA sends an unknown_ca alert: origin.test is spliced from then on.
    assert curl_tls(testbed, "https://origin.test/bytes/1", world.origin_ca).returncode != 0
    tg.wait_flows(lambda r: field(r, "event.action", "") == "tls.client_rejected_certificate"
                  and field(r, "tls.client.server_name", "") == "origin.test")
    res = curl_tls(testbed, "https://origin.test/bytes/1", world.origin_ca)
    assert res.returncode == 0, res.stderr
    assert issuer_cn(peer_certificate(testbed, "origin.test", str(world.origin_ca))) == "Origin CA"


def test_host_header_must_match_the_sni(testbed, world, tg):
    res = curl_tls(testbed, "https://origin.test/x", world.tollgate_ca, "-H", "Host: other.test", "-w", "\n%{http_code}")
    assert res.stdout.rpartition(b"\n")[2] == b"421"


def test_upstream_connections_are_reused_for_tls(testbed, world, tg):
    urls = [f"https://origin.test/bytes/{n}" for n in (11, 12, 13)]
    res = testbed.run_in(testbed.worker, ["curl", "-sS", "--cacert", str(world.tollgate_ca), "-D", "-", *urls], timeout=60)
    connections = {line.split(":")[1].strip() for line in res.stdout.splitlines() if line.lower().startswith("x-connection")}
    assert len(connections) == 1, res.stdout


def test_a_thousand_names_each_get_their_own_certificate_within_the_cache_bound(testbed, world, tg):
    script = (
        "import socket, ssl, sys\n"
        "ctx = ssl.create_default_context(cafile=sys.argv[1])\n"
        "bad = 0\n"
        "for i in range(1000):\n"
        "    name = f'n{i}.many.test'\n"
        "    with socket.create_connection(('203.0.113.10', 443), timeout=10) as raw:\n"
        "        with ctx.wrap_socket(raw, server_hostname=name) as s:\n"
        "            sans = [v for k, v in s.getpeercert()['subjectAltName']]\n"
        "            bad += sans != [name]\n"
        "print(bad)\n"
    )
    res = testbed.run_in(testbed.worker, ["python3", "-c", script, str(world.tollgate_ca)], timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"
    metrics = testbed.run_in(testbed.gateway, ["curl", "-sS", "http://127.0.0.1:9901/metrics"]).stdout
    values = {line.split()[0]: int(line.split()[1]) for line in metrics.splitlines() if line and not line.startswith("#")}
    assert values["tollgate_tls_certificates_cached"] <= 100
    assert values["tollgate_tls_certificates_minted_total"] >= 1000


def test_a_world_readable_ca_key_refuses_to_start(testbed, world, tmp_path):
    key = tmp_path / "ca-key.pem"
    key.write_bytes((world.ca_dir / "ca-key.pem").read_bytes())
    key.chmod(0o644)
    config = tmp_path / "c.yaml"
    config.write_text(f"listen: {{ explicit: ['127.0.0.1:39128'] }}\nca: {{ cert: {world.tollgate_ca}, key: {key} }}\n")
    res = subprocess.run([str(tollgate_binary()), "run", "--config", str(config)], capture_output=True, text=True, timeout=20)
    assert res.returncode != 0
    assert "readable by group or others" in res.stderr
