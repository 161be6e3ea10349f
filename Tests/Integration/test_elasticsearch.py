"""Issue 5: flow records shipped to Elasticsearch — never lost, never twice, never slowing
traffic, never carrying a secret (docs/interfaces.md, "Elasticsearch shipping").

Two servers stand in for Elasticsearch, both inside the gateway namespace on 127.0.0.1:
noida-db (an independent server speaking the Elasticsearch HTTP API) for the end-to-end test,
and fake_es.py, a scripted fake that injects faults (item 429/503/400, whole-request 413/5xx,
garbage answers, slow or silent servers) and counts every create per `_id`.

How a record is followed: every request carries a unique marker in its URL, so each flow is
known by its `url.full`; "exactly once" means one stored document per URL (the fake refuses a
second create of the same `_id` with 409, which counts as delivered) or one dead letter in
`<spool>/dead-letter.ndjson`, never both, never two.
"""

import base64
import gzip
import hashlib
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import time
import zlib
from collections import Counter
from pathlib import Path

import pytest

from fake_es import FakeES, FakeESClient
from helpers import field
from testbed import HERE, ORIGIN_IP, REPO, WORKER_IP, tollgate_binary, wait_until

TEMPLATE_FILE = REPO / "deploy/elasticsearch/index-template.json"
ILM_FILE = REPO / "deploy/elasticsearch/ilm-policy.json"
KIBANA_FILE = REPO / "deploy/kibana/tollgate.ndjson"
REDACTED = "[redacted]"
METRICS = ("tollgate_es_records_queued", "tollgate_es_records_shipped_total", "tollgate_es_records_retried_total",
           "tollgate_es_records_dead_lettered_total", "tollgate_es_records_dropped_total", "tollgate_es_spool_bytes",
           "tollgate_es_seconds_since_last_success")


# ---------------------------------------------------------------------------
# helpers

def es_overrides(urls, spool, **settings):
    """Config overrides: log.elasticsearch with quick batching and retries (tests wait less)."""
    es = {"url": urls if isinstance(urls, list) else [urls], "spool": str(spool),
          "flush_interval": "200ms", "retry_max": "2s", "request_timeout": "3s"}
    es.update(settings)
    return {"log": {"elasticsearch": es}}


def long_test(seconds):
    """Re-arm conftest's per-test alarm for a test that is long by design."""
    signal.alarm(seconds)


def metrics(tg):
    """The admin listener's /metrics as {name: value} (labels kept in the name)."""
    admin = tg.config["listen"]["admin"]
    res = tg.testbed.run_in(tg.testbed.gateway, ["curl", "-sS", "-m", "5", f"http://{admin}/metrics"], timeout=15)
    out = {}
    for line in res.stdout.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            pass
    return out


def load(testbed, prefix, count, start=0, concurrency=4, timeout=300, host=ORIGIN_IP):
    """Run loadgen.py in the worker: `count` keep-alive GETs of prefix+N through Tollgate."""
    res = testbed.run_in(testbed.worker, [sys.executable, HERE / "loadgen.py", "--target", f"{host}:80",
                                          "--prefix", prefix, "--start", start, "--count", count,
                                          "--concurrency", concurrency, "--timeout", timeout],
                         timeout=timeout + 30)
    try:
        result = json.loads(res.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        raise AssertionError(f"loadgen failed (rc {res.returncode}): {res.stdout[-500:]} {res.stderr[-1500:]}")
    return result


def traffic(testbed, marker, count, concurrency=4, start=0, tag=""):
    """`count` requests for /1k?<marker><tag>-N, all answered 200; returns their url.full values."""
    prefix = f"/1k?{marker}{tag}-"
    result = load(testbed, prefix, count, start=start, concurrency=concurrency)
    assert result["ok"] == count and result["failed"] == 0, f"traffic through Tollgate failed: {result}"
    return [f"http://{ORIGIN_IP}{prefix}{n}" for n in range(start, start + count)]


def dead_letters(spool):
    """Every entry of <spool>/dead-letter.ndjson; each line must be one complete JSON object."""
    path = Path(spool) / "dead-letter.ndjson"
    if not path.exists():
        return []
    data = path.read_bytes()
    out = []
    for i, line in enumerate(data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"), 1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise AssertionError(f"{path}:{i} is not JSON ({exc}): {line[:300]!r}")
        assert isinstance(entry, dict), f"{path}:{i} is not a JSON object: {line[:300]!r}"
        out.append(entry)
    assert data == b"" or data.endswith(b"\n"), f"{path} ends with a torn line: {data[-300:]!r}"
    return out


def check_dead_letter(entry):
    """The contract's shape: _id, _index, status, error{type, reason}, document{...}."""
    text = json.dumps(entry)[:600]
    assert isinstance(entry.get("_id"), str) and entry["_id"], f"dead letter without _id: {text}"
    assert isinstance(entry.get("_index"), str) and entry["_index"].startswith("autocode-traffic-"), \
        f"dead letter without _index: {text}"
    assert isinstance(entry.get("status"), int), f"dead letter without integer status: {text}"
    error = entry.get("error")
    assert isinstance(error, dict) and error.get("type") and error.get("reason"), \
        f"dead letter without error.type and error.reason: {text}"
    assert isinstance(entry.get("document"), dict), f"dead letter without the document: {text}"
    assert field(entry["document"], "event.id", None) == entry["_id"], f"document event.id != _id: {text}"


def index_for(doc_source):
    """autocode-traffic-YYYY.MM.DD from the document's @timestamp (UTC)."""
    return "autocode-traffic-" + doc_source["@timestamp"][:10].replace("-", ".")


class Delivery:
    """Where the records of one marker ended up: documents in the fake and dead letters."""

    def __init__(self, fake, spool, marker):
        self.docs = fake.docs(contains=marker)
        self.dead = [d for d in dead_letters(spool) if marker in json.dumps(d.get("document"))]
        self.doc_urls = Counter(field(d["source"], "url.full", None) for d in self.docs)
        self.dead_urls = Counter(field(d["document"], "url.full", None) for d in self.dead)

    def missing(self, urls):
        return [u for u in urls if u not in self.doc_urls and u not in self.dead_urls]

    def summary(self, urls):
        missing = self.missing(urls)
        return (f"{len(self.docs)} docs, {len(self.dead)} dead letters, {len(missing)} of {len(urls)} missing "
                f"(e.g. {missing[:3]})")


def bulk_log(fake, last=40):
    """The fake's recent requests, compact: (seconds since the first, method path, status, items)."""
    try:
        reqs = fake.requests()
    except OSError as exc:
        return f"(fake unreachable: {exc})"
    if not reqs:
        return "[]"
    t0 = reqs[0]["t"]
    return "; ".join(f"{r['t'] - t0:.1f}s {r['method']} {r['path']} -> {r.get('status')} "
                     f"{r.get('item_statuses', '')}" for r in reqs[-last:])


def wait_delivered(fake, spool, marker, urls, timeout=60.0, tg=None):
    """Wait until every URL is a document or a dead letter, then check 'exactly once'."""
    last = {"d": None}

    def done():
        d = Delivery(fake, spool, marker)
        last["d"] = d
        return d if not d.missing(urls) else None

    try:
        wait_until(done, timeout, interval=0.5, message="records delivered or dead-lettered")
    except TimeoutError:
        extra = ""
        if tg is not None:
            extra = f"\nmetrics: {metrics(tg)}\ntollgate stderr:\n{tg.stderr_tail(15)}"
        summary = last["d"].summary(urls) if last["d"] else "(no answer from the fake)"
        raise AssertionError(f"not all records arrived within {timeout}s: {summary}; "
                             f"fake stats: {json.dumps(fake.stats())[:1500]}\nfake requests: {bulk_log(fake)}{extra}")
    time.sleep(1.0)  # a late duplicate would show up now
    d = Delivery(fake, spool, marker)
    assert_exactly_once(d, urls)
    return d


def assert_exactly_once(d, urls):
    wanted = set(urls)
    twice = {u: n for u, n in d.doc_urls.items() if n > 1}
    assert not twice, f"records stored more than once (different _ids for one flow): {list(twice.items())[:5]}"
    dead_twice = {u: n for u, n in d.dead_urls.items() if n > 1}
    assert not dead_twice, f"records dead-lettered more than once: {list(dead_twice.items())[:5]}"
    both = set(d.doc_urls) & set(d.dead_urls)
    assert not both, f"records both stored and dead-lettered: {sorted(both)[:5]}"
    unexpected = (set(d.doc_urls) | set(d.dead_urls)) - wanted
    assert not unexpected, f"documents for flows that were not made: {sorted(unexpected, key=str)[:5]}"
    for doc in d.docs:
        src = doc["source"]
        assert field(src, "event.id", None) == doc["_id"], f"event.id != _id: {doc['_id']} {json.dumps(src)[:300]}"
        assert doc["_index"] == index_for(src), f"_index {doc['_index']} for @timestamp {src['@timestamp']}"
    for entry in d.dead:
        check_dead_letter(entry)


def assert_clean_protocol(fake):
    """Every bulk was gzip NDJSON with create actions, newline-terminated."""
    stats = fake.stats()
    assert not stats["protocol_errors"], f"malformed bulk requests: {stats['protocol_errors'][:5]}"
    assert set(stats["actions"]) <= {"create"}, f"bulk actions other than create: {stats['actions']}"
    assert set(stats["content_encodings"]) <= {"gzip"}, f"bulk bodies not gzip: {stats['content_encodings']}"
    assert set(stats["content_types"]) <= {"application/x-ndjson"}, f"bulk Content-Type: {stats['content_types']}"
    return stats


def ids_of(d):
    return [doc["_id"] for doc in d.docs]


# ---------------------------------------------------------------------------
# deploy/ files (no test bed needed)

def _mapping_leaves(properties, prefix=""):
    """{dotted field: mapping} for every leaf of a mappings.properties tree."""
    out = {}
    for name, spec in properties.items():
        path = f"{prefix}{name}"
        if "properties" in spec and "type" not in spec:
            out.update(_mapping_leaves(spec["properties"], path + "."))
        else:
            out[path] = spec
    return out


def _doc_leaves(doc, prefix="", flattened=()):
    out = set()
    for key, value in doc.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in flattened:
            out |= _doc_leaves(value, path + ".", flattened)
        else:
            out.add(path)
    return out


ES_TYPES = {"keyword", "long", "integer", "date", "ip", "boolean", "flattened", "wildcard", "match_only_text",
            "text", "object", "float", "double", "constant_keyword"}


def test_deploy_template_policy_and_kibana_export_are_consistent():
    template = json.loads(TEMPLATE_FILE.read_text())
    assert template["index_patterns"] == ["autocode-traffic-*"]
    assert template["priority"] > 200
    settings = template["template"]["settings"]
    assert settings.get("index.lifecycle.name") == "tollgate-traffic"
    leaves = _mapping_leaves(template["template"]["mappings"]["properties"])
    for name, spec in leaves.items():
        assert spec.get("type") in ES_TYPES, f"{name}: unknown mapping type {spec.get('type')!r}"
    expected = {"@timestamp": "date", "source.ip": "ip", "destination.ip": "ip", "source.port": "long",
                "destination.port": "long", "destination.bytes": "long", "source.bytes": "long",
                "event.duration": "long", "http.response.status_code": "long",
                "http.request.body.bytes": "long", "http.response.body.bytes": "long",
                "tls.established": "boolean", "tollgate.upstream_reused": "boolean",
                "http.request.headers": "flattened", "http.response.headers": "flattened",
                "tollgate.agent": "keyword", "tollgate.decision": "keyword", "rule.name": "keyword",
                "url.domain": "keyword", "event.id": "keyword", "event.kind": "keyword", "event.category": "keyword",
                "event.type": "keyword", "event.action": "keyword", "event.outcome": "keyword",
                "observer.type": "keyword", "observer.product": "keyword", "observer.vendor": "keyword",
                "observer.version": "keyword", "observer.hostname": "keyword", "network.transport": "keyword",
                "network.protocol": "keyword", "url.query": "keyword", "url.path": "keyword",
                "user_agent.original": "keyword", "tls.version": "keyword", "tls.cipher": "keyword",
                "tls.client.server_name": "keyword", "rule.ruleset": "keyword", "error.type": "keyword",
                "tollgate.mode": "keyword", "tollgate.tls": "keyword", "event.reason": "keyword"}
    for name, typ in expected.items():
        assert name in leaves, f"template lacks {name}"
        assert leaves[name]["type"] == typ, f"{name} is {leaves[name]['type']}, expected {typ}"
    assert leaves["url.full"]["type"] in ("wildcard", "keyword", "text")

    policy = json.loads(ILM_FILE.read_text())
    assert policy["policy"]["phases"]["delete"]["min_age"] == "30d"
    assert "delete" in policy["policy"]["phases"]["delete"]["actions"]

    objects = [json.loads(line) for line in KIBANA_FILE.read_text().splitlines() if line.strip()]
    by_id = {(o["type"], o["id"]): o for o in objects}
    assert len(by_id) == len(objects), "duplicate saved-object ids"
    for o in objects:
        assert set(o) >= {"type", "id", "attributes", "references"}, f"saved object lacks keys: {o.get('id')}"
        for ref in o["references"]:
            assert (ref["type"], ref["id"]) in by_id, f"{o['id']} references missing {ref}"
        meta = o["attributes"].get("kibanaSavedObjectMeta", {}).get("searchSourceJSON")
        if meta:
            json.loads(meta)
    [view] = [o for o in objects if o["type"] == "index-pattern"]
    assert view["attributes"]["title"] == "autocode-traffic-*" and view["attributes"]["timeFieldName"] == "@timestamp"
    used = set()
    for o in objects:
        if o["type"] == "visualization":
            state = json.loads(o["attributes"]["visState"])
            assert state["aggs"], f"{o['id']} has no aggregations"
            used |= {a["params"]["field"] for a in state["aggs"] if "field" in a.get("params", {})}
        if o["type"] == "search":
            used |= set(o["attributes"]["columns"])
    unknown = used - set(leaves)
    assert not unknown, f"Kibana objects use fields the template does not map: {unknown}"
    for needed in ("tollgate.agent", "tollgate.decision", "rule.name", "url.domain", "http.response.body.bytes",
                   "destination.bytes", "@timestamp"):
        assert needed in used, f"no dashboard panel uses {needed}"
    [dashboard] = [o for o in objects if o["type"] == "dashboard"]
    panels = json.loads(dashboard["attributes"]["panelsJSON"])
    refs = {r["name"] for r in dashboard["references"]}
    assert len(panels) >= 6 and all(p["panelRefName"] in refs for p in panels)


def test_daemon_template_and_policy_agree_with_deploy_files():
    """`tollgate es template` (what setup installs) and deploy/elasticsearch/ must not drift apart."""
    binary = tollgate_binary()
    if not binary.exists():
        pytest.skip(f"no tollgate binary at {binary}")
    res = subprocess.run([binary, "es", "template"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    daemon = json.loads(res.stdout)
    deploy = json.loads(TEMPLATE_FILE.read_text())
    assert daemon["index_patterns"] == deploy["index_patterns"] and daemon["priority"] == deploy["priority"]
    assert daemon["template"]["settings"].get("index.lifecycle.name") == \
        deploy["template"]["settings"].get("index.lifecycle.name")
    ours = _mapping_leaves(daemon["template"]["mappings"]["properties"])
    theirs = _mapping_leaves(deploy["template"]["mappings"]["properties"])
    textual = {"text", "match_only_text"}
    differ = {name: (spec["type"], theirs.get(name, {}).get("type")) for name, spec in ours.items()
              if not (spec["type"] == theirs.get(name, {}).get("type")
                      or {spec["type"], theirs.get(name, {}).get("type")} <= textual)}
    assert not differ, f"field: (daemon type, deploy type): {differ}"

    res = subprocess.run([binary, "es", "template", "--policy"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    policy = json.loads(res.stdout)
    assert policy["policy"]["phases"]["delete"] == json.loads(ILM_FILE.read_text())["policy"]["phases"]["delete"]


# ---------------------------------------------------------------------------
# (a) end to end against noida-db

def _noida_binary():
    try:
        import noida_db
        path = Path(noida_db.__file__).parent / "noida-db"
        if path.exists():
            return path
    except ImportError:
        pass
    import shutil
    found = shutil.which("noida-db")
    return Path(found) if found else None


def _free_port(testbed, ns):
    sock = testbed.socket_in(ns)
    try:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


class ESHttp(FakeESClient):
    """Plain Elasticsearch API calls into the gateway namespace (JSON in, (status, JSON) out)."""

    def call(self, method, path, body=None):
        data = body
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
        status, raw = self.request(method, path, data)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw


@pytest.fixture(scope="module")
def noida(testbed):
    binary = _noida_binary()
    if binary is None:
        pytest.fail("noida-db is not installed: run scripts/bootstrap.sh (pip install noida-db)", pytrace=False)
    port = _free_port(testbed, testbed.gateway)
    data = testbed.tmp / "noida-data"
    data.mkdir(exist_ok=True)
    log = open(testbed.tmp / "noida.log", "wb")
    proc = testbed.popen_in(testbed.gateway, [binary, "start", "--only", "elasticsearch", "--host", "127.0.0.1",
                                              "--elasticsearch-port", port, "--data-dir", data],
                            stdout=log, stderr=log, stdin=subprocess.DEVNULL, cwd=str(data))
    log.close()
    client = ESHttp(lambda: testbed.connect(testbed.gateway, ("127.0.0.1", port), timeout=5))

    def up():
        if proc.poll() is not None:
            raise RuntimeError(f"noida-db exited: {(testbed.tmp / 'noida.log').read_text()[-2000:]}")
        try:
            return client.call("GET", "/")[0] == 200
        except OSError:
            return False

    wait_until(up, 30, interval=0.2, message="noida-db answering")
    client.url = f"http://127.0.0.1:{port}"
    client.proc = proc
    yield client
    proc.kill()
    proc.wait()


def _es_search(es, query, size=500):
    es.call("POST", "/autocode-traffic-*/_refresh")
    status, body = es.call("POST", f"/autocode-traffic-*/_search?size={size}", {"query": query})
    assert status == 200, f"_search -> {status}: {body}"
    return body["hits"]["hits"]


def test_end_to_end_with_noida_db(testbed, origin, tollgates, noida, marker):
    spool = testbed.tmp / f"spool-noida-{marker}"
    tg = tollgates.fresh(es_overrides(noida.url, spool, setup=True))

    # The template (and the ILM policy's name in it) was installed at start-up.
    def template():
        status, body = noida.call("GET", "/_index_template/tollgate-traffic")
        return body if status == 200 else None
    body = wait_until(template, 15, message="index template tollgate-traffic installed")
    [entry] = [t for t in body["index_templates"] if t["name"] == "tollgate-traffic"]
    tpl = entry["index_template"]
    assert tpl["index_patterns"] == ["autocode-traffic-*"], tpl["index_patterns"]
    assert tpl["priority"] > 200, tpl["priority"]
    mapped = _mapping_leaves(tpl["template"]["mappings"]["properties"])
    assert mapped["source.ip"]["type"] == "ip" and mapped["@timestamp"]["type"] == "date", mapped

    urls = []
    for n in range(5):
        urls.append(f"http://origin.test/1k?{marker}-{n}")
    args = [a for u in urls for a in ("-o", "/dev/null", u)]
    res = testbed.run_in(testbed.worker, ["curl", "-sS", "-w", "%{http_code}\\n", "-A", f"curl-e2e-{marker}", *args],
                         timeout=60)
    assert res.stdout.split() == ["200"] * 5, res.stdout + res.stderr

    query = {"bool": {"filter": [{"term": {"url.domain": "origin.test"}}, {"term": {"tollgate.agent": "worker-1"}}]}}

    def found():
        hits = [h for h in _es_search(noida, query) if marker in json.dumps(h["_source"])]
        return hits if len(hits) >= 5 else None
    try:
        hits = wait_until(found, 30, interval=0.5, message="documents searchable in noida-db")
    except TimeoutError:
        raise AssertionError(f"documents not found by url.domain + tollgate.agent; metrics {metrics(tg)}; "
                             f"stderr:\n{tg.stderr_tail(20)}")
    assert sorted(field(h["_source"], "url.full") for h in hits) == sorted(urls)
    for hit in hits:
        doc = hit["_source"]
        text = json.dumps(doc)[:800]
        assert hit["_id"] == field(doc, "event.id"), text
        assert hit["_index"] == index_for(doc), f"{hit['_index']} vs {doc['@timestamp']}"
        assert field(doc, "event.kind") == "event", text
        assert "web" in field(doc, "event.category") and "network" in field(doc, "event.category"), text
        assert field(doc, "event.type"), text
        assert field(doc, "event.action") == "http_request", text
        assert field(doc, "observer.type") == "proxy" and field(doc, "observer.product") == "tollgate", text
        assert field(doc, "observer.version") and field(doc, "observer.hostname"), text
        assert field(doc, "network.transport") == "tcp" and field(doc, "network.protocol") == "http", text
        assert field(doc, "source.ip") == WORKER_IP and field(doc, "destination.ip") == ORIGIN_IP, text
        assert field(doc, "destination.port") == 80, text
        assert field(doc, "http.request.method") == "GET" and field(doc, "http.response.status_code") == 200, text
        assert field(doc, "http.response.body.bytes") == 1024, text
        assert field(doc, "user_agent.original") == f"curl-e2e-{marker}", text
        assert field(doc, "http.request.headers")["host"] == "origin.test", text
        assert field(doc, "url.path") == "/1k", text
        assert isinstance(field(doc, "event.duration"), int), text
        assert field(doc, "tollgate.mode") == "transparent", text
        # Every field Tollgate writes is mapped explicitly (headers are one flattened field).
        unmapped = _doc_leaves(doc, flattened=("http.request.headers", "http.response.headers")) - set(mapped)
        assert not unmapped, f"fields written but not in the template's explicit mappings: {sorted(unmapped)}"

    # A search on the agent alone finds them too, and _count agrees.
    by_agent = [h for h in _es_search(noida, {"term": {"tollgate.agent": "worker-1"}}) if marker in json.dumps(h)]
    assert len(by_agent) == 5
    status, count = noida.call("POST", "/autocode-traffic-*/_count", {"query": {"bool": {"filter": [
        {"term": {"url.domain": "origin.test"}}, {"term": {"tollgate.agent": "worker-1"}},
        {"terms": {"_id": [h["_id"] for h in hits]}}]}}})
    assert status == 200 and count["count"] == 5, count
    assert not dead_letters(spool), f"dead letters against a real server: {dead_letters(spool)[:2]}"


def test_es_setup_command_installs_template_into_noida_db(testbed, noida, marker):
    noida.call("DELETE", "/_index_template/tollgate-traffic")
    config = testbed.tollgate_config(es_overrides(noida.url, testbed.tmp / f"spool-setup-{marker}"), "es-setup")
    path = testbed.write_config(config, f"es-setup-{marker}")
    res = testbed.run_in(testbed.gateway, [tollgate_binary(), "es", "setup", "--config", path], timeout=60)
    assert res.returncode == 0, f"tollgate es setup exited {res.returncode}: {res.stderr[-2000:]}"
    status, body = noida.call("GET", "/_index_template/tollgate-traffic")
    assert status == 200, body
    tpl = body["index_templates"][0]["index_template"]
    assert tpl["priority"] > 200 and tpl["index_patterns"] == ["autocode-traffic-*"]


@pytest.mark.parametrize("variant", ["defaults", "custom-index-and-retention"])
def test_es_setup_command_sends_policy_and_template(testbed, marker, variant):
    fake = FakeES(testbed, name=f"fake-es-setup-{variant}")
    try:
        settings = {} if variant == "defaults" else {"index": "agents-egress", "retention_days": 7}
        config = testbed.tollgate_config(es_overrides(fake.url, testbed.tmp / f"spool-setup-{marker}", **settings),
                                         "es-setup")
        path = testbed.write_config(config, f"es-setup-{marker}")
        res = testbed.run_in(testbed.gateway, [tollgate_binary(), "es", "setup", "--config", path], timeout=60)
        assert res.returncode == 0, f"tollgate es setup exited {res.returncode}: {res.stderr[-2000:]}"
        got = fake.templates()
        assert "tollgate-traffic" in got["policies"], f"no ILM policy tollgate-traffic: {list(got['policies'])}"
        assert "tollgate-traffic" in got["templates"], f"no index template tollgate-traffic: {list(got['templates'])}"
        policy = got["policies"]["tollgate-traffic"]
        days = "30d" if variant == "defaults" else "7d"
        assert field(policy, "policy.phases.delete.min_age") == days, json.dumps(policy)
        assert "delete" in field(policy, "policy.phases.delete.actions"), json.dumps(policy)
        tpl = got["templates"]["tollgate-traffic"]
        pattern = "autocode-traffic-*" if variant == "defaults" else "agents-egress-*"
        assert tpl["index_patterns"] == [pattern], tpl["index_patterns"]
        assert tpl["priority"] > 200
        settings = tpl["template"]["settings"]
        lifecycle = settings.get("index.lifecycle.name") or field(settings, "index.lifecycle.name", None)
        assert lifecycle == "tollgate-traffic", settings
        # The policy must exist before a template refers to it.
        reqs = [r["path"] for r in fake.requests() if r["method"] == "PUT"]
        assert reqs.index("/_ilm/policy/tollgate-traffic") < reqs.index("/_index_template/tollgate-traffic"), reqs
    finally:
        fake.stop()


# ---------------------------------------------------------------------------
# (b) faults, against fake_es.py; one Tollgate for all of them

@pytest.fixture(scope="module")
def fault_fake(testbed):
    fake = FakeES(testbed, name="fake-es-faults")
    yield fake
    fake.stop()


@pytest.fixture
def shipper(testbed, origin, tollgates, fault_fake):
    """(tollgate, fake, spool): the fake restarted (empty, every connection closed) per test."""
    spool = testbed.tmp / "spool-faults"
    tg = tollgates.get(es_overrides(fault_fake.url, spool))
    fault_fake.restart()
    yield tg, fault_fake, spool
    if fault_fake.alive():
        fault_fake.mode(reset=True)


@pytest.mark.parametrize("status", [429, 503])
def test_item_failures_are_retried_alone_until_delivered(testbed, shipper, marker, status):
    tg, fake, spool = shipper
    fake.mode(**{f"item_{status}_rate": 0.3, "seed": 7})
    urls = traffic(testbed, marker, 300)
    d = wait_delivered(fake, spool, marker, urls, tg=tg)
    assert not d.dead, f"item {status}s must be retried, not dead-lettered: {d.dead[:2]}"
    stats = assert_clean_protocol(fake)
    assert stats["items_by_status"].get(str(status), 0) > 0, f"the fake answered no item {status}: {stats}"
    history = fake.history()
    retried = 0
    for doc_id in ids_of(d):
        h = history[doc_id]
        # [status]*k + [201]: only failed items are sent again, and none after it was stored.
        assert h[-1] == 201 and set(h[:-1]) <= {status}, \
            f"{doc_id}: item statuses {h} (a 409 means a stored record was sent again: batch re-sent whole)"
        retried += len(h) > 1
    assert retried > 0
    assert metrics(tg).get("tollgate_es_records_retried_total", 0) > 0


def test_413_splits_the_batch(testbed, shipper, marker):
    tg, fake, spool = shipper
    fake.mode(max_body_bytes=8192)
    urls = traffic(testbed, marker, 400, concurrency=8)
    d = wait_delivered(fake, spool, marker, urls, tg=tg)
    assert not d.dead, f"records dead-lettered although each fits alone: {d.dead[:2]}"
    stats = assert_clean_protocol(fake)
    assert stats["bulk_by_status"].get("413", 0) > 0, f"no batch was over the limit, nothing tested: {stats}"
    accepted = [r for r in fake.requests() if r.get("status") == 200 and r["path"].endswith("_bulk")]
    assert accepted and all(r["bytes"] <= 8192 for r in accepted)


def test_record_too_large_for_the_server_is_dead_lettered_not_retried_forever(testbed, shipper, marker):
    tg, fake, spool = shipper
    fake.mode(max_body_bytes=6000)
    big = f"/1k?{marker}-big-" + "x" * 3000  # url.full, url.query... make this one record > 6000 bytes
    res = load(testbed, big, 1, concurrency=1)
    assert res["ok"] == 1, res
    urls = [f"http://{ORIGIN_IP}{big}0"] + traffic(testbed, marker, 20)
    d = wait_delivered(fake, spool, marker, urls, timeout=60, tg=tg)
    [entry] = d.dead
    assert field(entry["document"], "url.full") == urls[0]
    assert entry["status"] == 413, entry
    assert len(d.docs) == 20


@pytest.mark.parametrize("status", [500, 503, 429])
def test_whole_request_failures_are_retried(testbed, shipper, marker, status):
    tg, fake, spool = shipper
    fake.mode(fail_next=4, fail_status=status)
    urls = traffic(testbed, marker, 100)
    d = wait_delivered(fake, spool, marker, urls, tg=tg)
    assert not d.dead, d.dead[:2]
    stats = assert_clean_protocol(fake)
    assert stats["bulk_by_status"].get(str(status), 0) == 4, stats["bulk_by_status"]


@pytest.mark.parametrize("stored", [True, False], ids=["processed-then-garbage", "garbage-only"])
def test_garbage_answers_are_retried(testbed, shipper, marker, stored):
    tg, fake, spool = shipper
    fake.mode(garbage_next=2, garbage_store=stored)
    urls = traffic(testbed, marker, 100)
    d = wait_delivered(fake, spool, marker, urls, tg=tg)
    assert not d.dead, d.dead[:2]
    stats = assert_clean_protocol(fake)
    assert stats["garbage_answers"] == 2, stats
    if stored:
        assert stats["items_by_status"].get("409", 0) > 0, "a retry after a garbage answer should meet 409s"


@pytest.mark.parametrize("variant", ["slow", "slower-than-request-timeout"])
def test_slow_server(testbed, shipper, marker, variant):
    tg, fake, spool = shipper
    if variant == "slow":
        fake.mode(delay=1.0)  # request_timeout is 3 s
    else:
        fake.mode(delay_next=1, delay_next_seconds=8.0)  # processed at once, answered after 8 s
    started = time.monotonic()
    urls = traffic(testbed, marker, 100)
    took = time.monotonic() - started
    d = wait_delivered(fake, spool, marker, urls, timeout=60, tg=tg)
    assert not d.dead, d.dead[:2]
    stats = assert_clean_protocol(fake)
    assert stats["delayed_answers"] >= 1, stats
    assert took < 20, f"traffic took {took:.1f}s while Elasticsearch was slow"
    if variant != "slow":
        # The records were stored before the slow answer; Tollgate gives up after request_timeout
        # (3 s) and sends them again, which the fake answers with 409 = delivered.
        try:
            wait_until(lambda: fake.stats()["items_by_status"].get("409", 0) > 0, 15, interval=0.5,
                       message="the timed-out batch sent again")
        except TimeoutError:
            raise AssertionError(f"the batch answered only after 8 s (request_timeout 3 s) was not sent again "
                                 f"within 15 s: {bulk_log(fake)}")
        d = wait_delivered(fake, spool, marker, urls, timeout=30, tg=tg)
        assert not d.dead, d.dead[:2]


@pytest.mark.parametrize("variant", ["reads-never-answers", "accepts-never-reads"])
def test_server_that_never_answers(testbed, shipper, marker, variant):
    tg, fake, spool = shipper
    if variant == "reads-never-answers":
        fake.mode(hang_next=2)
    else:
        fake.mode(hang_accept_next=2)
    urls = traffic(testbed, marker, 100)
    d = wait_delivered(fake, spool, marker, urls, timeout=60, tg=tg)
    assert not d.dead, d.dead[:2]
    stats = assert_clean_protocol(fake)
    hung = stats["hung_requests"] if variant == "reads-never-answers" else stats["hung_connections"]
    assert hung >= 1, f"nothing hung, nothing tested: {stats}"


def test_rejected_items_are_dead_lettered_once(testbed, shipper, marker):
    tg, fake, spool = shipper
    before = metrics(tg).get("tollgate_es_records_dead_lettered_total", 0)
    fake.mode(reject_match=f"{marker}bad")
    good = traffic(testbed, marker, 50)
    bad = traffic(testbed, marker, 5, tag="bad")
    d = wait_delivered(fake, spool, marker, good + bad, tg=tg)
    assert sorted(d.doc_urls) == sorted(good)
    assert sorted(d.dead_urls) == sorted(bad)
    history = fake.history()
    for entry in d.dead:
        assert entry["status"] == 400 and entry["error"]["type"] == "mapper_parsing_exception", entry
        assert history[entry["_id"]] == [400], f"a 400 item was sent again: {history[entry['_id']]}"
    after = metrics(tg)
    assert after.get("tollgate_es_records_dead_lettered_total", 0) - before >= 5, after


def test_everything_at_once(testbed, shipper, marker):
    tg, fake, spool = shipper
    fake.mode(item_429_rate=0.2, reject_match=f"{marker}bad", fail_next=2, garbage_next=1, hang_next=1,
              max_body_bytes=30000, seed=3)
    good = traffic(testbed, marker, 300, concurrency=8)
    bad = traffic(testbed, marker, 10, tag="bad")
    d = wait_delivered(fake, spool, marker, good + bad, timeout=90, tg=tg)
    assert sorted(d.doc_urls) == sorted(good)
    assert sorted(d.dead_urls) == sorted(bad)
    assert_clean_protocol(fake)


def test_metrics_are_exposed(testbed, shipper, marker):
    tg, fake, spool = shipper
    urls = traffic(testbed, marker, 10)
    wait_delivered(fake, spool, marker, urls, tg=tg)
    m = metrics(tg)
    missing = [name for name in METRICS if name not in m]
    assert not missing, f"/metrics lacks {missing}"
    assert m["tollgate_es_records_shipped_total"] >= 10
    assert 0 <= m["tollgate_es_seconds_since_last_success"] < 30
    wait_until(lambda: metrics(tg)["tollgate_es_records_queued"] == 0, 10, message="queue empty")


# ---------------------------------------------------------------------------
# other configurations

@pytest.mark.parametrize("auth", ["basic", "api_key"])
def test_authentication_is_sent(testbed, origin, tollgates, marker, auth):
    if auth == "basic":
        settings = {"username": "elastic", "password": "s3cret-pw"}
        expected = "Basic " + base64.b64encode(b"elastic:s3cret-pw").decode()
    else:
        settings = {"api_key": "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="}
        expected = "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
    fake = FakeES(testbed, name=f"fake-es-auth-{auth}", mode={"require_auth": expected})
    try:
        spool = testbed.tmp / f"spool-auth-{marker}"
        tg = tollgates.fresh(es_overrides(fake.url, spool, **settings))
        urls = traffic(testbed, marker, 20)
        wait_delivered(fake, spool, marker, urls, tg=tg)
        bulks = [r for r in fake.requests() if r["path"].endswith("_bulk")]
        assert bulks and all(r["headers"].get("authorization") == expected for r in bulks)
    finally:
        tollgates.stop()
        fake.stop()


def test_failover_to_the_next_node(testbed, origin, tollgates, marker):
    fake = FakeES(testbed, name="fake-es-failover")
    dead = f"http://127.0.0.1:{_free_port(testbed, testbed.gateway)}"
    try:
        spool = testbed.tmp / f"spool-failover-{marker}"
        tg = tollgates.fresh(es_overrides([dead, fake.url], spool))
        urls = traffic(testbed, marker, 200)
        wait_delivered(fake, spool, marker, urls, timeout=30, tg=tg)
    finally:
        tollgates.stop()
        fake.stop()


# ---------------------------------------------------------------------------
# (c) Elasticsearch down for 60 s while 20,000 requests pass

OUTAGE_REQUESTS = 20000
OUTAGE_SECONDS = 60
OUTAGE_CHUNKS = 5
BASELINE_RUNS = 3
BASELINE_REQUESTS = 4000
CONCURRENCY = 8


def test_outage_of_60s_loses_nothing_duplicates_nothing_and_does_not_slow_traffic(testbed, origin, tollgates, marker):
    long_test(420)
    fake = FakeES(testbed, name="fake-es-outage")
    spool = testbed.tmp / f"spool-outage-{marker}"
    tg = tollgates.fresh(es_overrides(fake.url, spool, retry_max="5s", request_timeout="10s"))
    try:
        load(testbed, f"/1k?{marker}warm-", 1000, concurrency=CONCURRENCY)  # warm up both sides

        # Normal: Elasticsearch up and taking every batch.
        normal = []
        for run in range(BASELINE_RUNS):
            r = load(testbed, f"/1k?{marker}base{run}-", BASELINE_REQUESTS, concurrency=CONCURRENCY)
            assert r["ok"] == BASELINE_REQUESTS, r
            normal.append(r["rate"])
        wait_until(lambda: len(fake.docs(contains=f"{marker}base", field="url.full"))
                   >= BASELINE_RUNS * BASELINE_REQUESTS, 60, interval=0.5, message="baseline records shipped")

        # Outage: the port is closed for 60 s; 20,000 requests in 5 measured chunks spread over it.
        fake.stop()
        down_at = time.monotonic()
        during = []
        per_chunk = OUTAGE_REQUESTS // OUTAGE_CHUNKS
        for chunk in range(OUTAGE_CHUNKS):
            r = load(testbed, f"/1k?{marker}out-", per_chunk, start=chunk * per_chunk, concurrency=CONCURRENCY)
            assert r["ok"] == per_chunk and r["failed"] == 0, f"traffic failed during the outage: {r}"
            during.append(r["rate"])
            pause_until = down_at + (chunk + 1) * (OUTAGE_SECONDS - 5) / OUTAGE_CHUNKS
            time.sleep(max(0.0, pause_until - time.monotonic()))
        assert tg.alive(), f"tollgate died during the outage:\n{tg.stderr_tail()}"
        queued_during = metrics(tg).get("tollgate_es_records_queued")
        time.sleep(max(0.0, down_at + OUTAGE_SECONDS - time.monotonic()))
        outage_seconds = time.monotonic() - down_at

        # Back: a fresh server on the same port (it has seen none of these records).
        fake.start()
        expected = OUTAGE_REQUESTS

        def arrived():
            got = fake.docs(contains=f"{marker}out-", field="url.full")
            return got if len(got) >= expected else None
        try:
            got = wait_until(arrived, 120, interval=1.0, message="all outage records delivered")
        except TimeoutError:
            got = fake.docs(contains=f"{marker}out-", field="url.full")
            raise AssertionError(f"{len(got)} of {expected} records arrived 120 s after Elasticsearch came back; "
                                 f"metrics {metrics(tg)}; stderr:\n{tg.stderr_tail(15)}")
        time.sleep(2.0)
        got = fake.docs(contains=f"{marker}out-", field="url.full")
        counts = Counter(got)
        twice = [u for u, n in counts.items() if n > 1]
        assert not twice, f"{len(twice)} records stored twice, e.g. {twice[:3]}"
        wanted = {f"http://{ORIGIN_IP}/1k?{marker}out-{n}" for n in range(OUTAGE_REQUESTS)}
        assert set(counts) == wanted, f"missing {len(wanted - set(counts))}, unexpected {len(set(counts) - wanted)}"
        assert not [d for d in dead_letters(spool) if marker in json.dumps(d)], "records dead-lettered"
        assert metrics(tg).get("tollgate_es_records_dropped_total", 0) == 0
        assert_clean_protocol(fake)

        # Normal again, backlog delivered: two more runs, so drift on a busy machine evens out.
        for run in range(BASELINE_RUNS, BASELINE_RUNS + 2):
            r = load(testbed, f"/1k?{marker}base{run}-", BASELINE_REQUESTS, concurrency=CONCURRENCY)
            assert r["ok"] == BASELINE_REQUESTS, r
            normal.append(r["rate"])

        normal_rate = statistics.median(normal)
        outage_rate = statistics.median(during)
        print(f"\nthroughput: normal {normal} -> median {normal_rate:.0f}/s; during outage {during} -> "
              f"median {outage_rate:.0f}/s ({outage_rate / normal_rate:.1%}); outage {outage_seconds:.0f}s")
        assert queued_during is not None and queued_during >= OUTAGE_REQUESTS, \
            f"tollgate_es_records_queued was {queued_during} with {OUTAGE_REQUESTS} records waiting"
        assert outage_rate >= 0.9 * normal_rate, \
            f"throughput during the outage {outage_rate:.0f}/s is below 90% of normal {normal_rate:.0f}/s " \
            f"(normal runs {normal}, outage runs {during})"
    finally:
        tollgates.stop()
        fake.stop()


# ---------------------------------------------------------------------------
# (d) kill -9 with records spooled and unacknowledged

def _spool_bytes(spool):
    total = 0
    for path in Path(spool).rglob("*"):
        if path.is_file() and path.name != "dead-letter.ndjson":
            total += path.stat().st_size
    return total


@pytest.mark.parametrize("es_state", ["down", "never-answers"])
def test_kill_9_with_spooled_records_then_restart_delivers_them(testbed, origin, tollgates, marker, es_state):
    long_test(240)
    fake = FakeES(testbed, name=f"fake-es-kill-{es_state}")
    spool = testbed.tmp / f"spool-kill-{marker}"
    overrides = es_overrides(fake.url, spool, request_timeout="60s")
    try:
        if es_state == "down":
            fake.stop()
        else:
            fake.mode(hang=True)
        tg = tollgates.fresh(overrides)
        urls = traffic(testbed, marker, 500)
        tg.wait_flows(lambda r: marker in field(r, "url.full", ""), count=500, timeout=15)
        wait_until(lambda: _spool_bytes(spool) > 0, 15, message="records in the spool")
        time.sleep(2.0)  # past the spool's fsync interval
        if es_state == "never-answers":
            assert fake.stats()["hung_requests"] >= 1, "Tollgate never sent a batch to the silent server"
            assert not fake.docs(contains=marker)
        tg.send_signal(signal.SIGKILL)
        tg.proc.wait(10)
        tollgates.current = None

        fake.restart()  # a healthy server on the same port
        tg2 = tollgates.fresh(overrides)
        wait_delivered(fake, spool, marker, urls, timeout=60, tg=tg2)
        assert_clean_protocol(fake)
        d = Delivery(fake, spool, marker)
        assert not d.dead, d.dead[:2]
    finally:
        tollgates.stop()
        fake.stop()


def _spool_entries(segment):
    """(offset, size, urls) of each entry of a spool segment file: magic A7 00 00 00, body length
    and CRC-32C (u32 LE), then records, plain length, plain CRC-32 and a raw deflate chunk."""
    data = segment.read_bytes()
    entries, offset = [], 0
    while offset + 12 <= len(data):
        assert data[offset:offset + 4] == b"\xa7\x00\x00\x00", f"{segment}: no entry at {offset}"
        size = 12 + int.from_bytes(data[offset + 4:offset + 8], "little")
        lines = zlib.decompressobj(-15).decompress(data[offset + 24:offset + size])
        urls = [field(json.loads(doc), "url.full", None) for doc in lines.split(b"\n")[1::2] if doc]
        entries.append((offset, size, urls))
        offset += size
    return entries


def test_a_damaged_spool_entry_costs_only_its_own_records(testbed, origin, tollgates, marker):
    """Damage in the middle of a segment (a bad block): after a restart every record of the
    entries around it is delivered, once; the damaged bytes are kept aside and reported."""
    long_test(180)
    fake = FakeES(testbed, name="fake-es-damage")
    spool = testbed.tmp / f"spool-damage-{marker}"
    overrides = es_overrides(fake.url, spool)
    try:
        fake.stop()
        tg = tollgates.fresh(overrides)
        urls = []
        for part in range(6):  # in steps, so that the records span several entries
            urls += traffic(testbed, marker, 50, start=50 * part)
            time.sleep(0.1)
        tg.wait_flows(lambda r: marker in field(r, "url.full", ""), count=len(urls), timeout=15)

        def spooled():
            try:
                return sum(len(e[2]) for seg in Path(spool).glob("*.seg") for e in _spool_entries(seg))
            except (AssertionError, zlib.error):  # an entry being written
                return -1
        wait_until(lambda: spooled() == len(urls), 15, message="every record in the spool")
        tollgates.stop()
        [segment] = [seg for seg in Path(spool).glob("*.seg") if seg.stat().st_size > 0]
        entries = _spool_entries(segment)
        assert len(entries) >= 3, f"only {len(entries)} spool entries"
        offset, size, lost = entries[len(entries) // 2]
        with open(segment, "r+b") as f:  # flip a byte inside the entry's compressed chunk
            f.seek(offset + size - 5)
            byte = f.read(1)
            f.seek(offset + size - 5)
            f.write(bytes([byte[0] ^ 0x55]))

        fake.restart()
        tg2 = tollgates.fresh(overrides)
        kept = [u for u in urls if u not in set(lost)]
        wait_delivered(fake, spool, marker, kept, timeout=60, tg=tg2)
        d = Delivery(fake, spool, marker)
        assert not any(u in d.doc_urls for u in lost), "records of the damaged entry were delivered"
        assert len(d.docs) == len(kept), f"{len(d.docs)} documents for {len(kept)} kept records"
        saved = Path(spool) / f"damaged-{int(segment.stem)}-{offset}"
        assert saved.exists() and saved.stat().st_size == size, sorted(p.name for p in Path(spool).iterdir())
        assert "damaged byte(s)" in tg2.stderr_tail(50)
    finally:
        tollgates.stop()
        fake.stop()


# ---------------------------------------------------------------------------
# (e) redaction

def _decoded_views(data):
    """data itself plus whatever gzip/zlib streams inside it decompress to (spool files may compress)."""
    views = [data]
    for magic in (b"\x1f\x8b", b"\x78\x9c", b"\x78\x01", b"\x78\xda", b"\x78\x5e"):
        start = 0
        while True:
            at = data.find(magic, start)
            if at < 0:
                break
            start = at + 1
            wbits = 31 if magic == b"\x1f\x8b" else 15
            try:
                views.append(zlib.decompressobj(wbits).decompress(data[at:], 64 * 1024 * 1024))
            except zlib.error:
                pass
    # raw deflate per record is possible too; try from every offset would be slow, so only the whole file
    try:
        views.append(zlib.decompressobj(-15).decompress(data, 64 * 1024 * 1024))
    except zlib.error:
        pass
    return views


def _files_containing(paths, needles):
    hits = []
    for path in paths:
        if not path.is_file():
            continue
        data = path.read_bytes()
        views = _decoded_views(data)
        for needle in needles:
            raw = needle.encode()
            if any(raw in v for v in views):
                hits.append((str(path), needle))
    return hits


def test_secrets_are_redacted_everywhere(testbed, origin, tollgates, marker):
    fake = FakeES(testbed, name="fake-es-redaction", mode={"fail_next": 100000, "fail_status": 503})
    spool = testbed.tmp / f"spool-redact-{marker}"
    overrides = es_overrides(fake.url, spool)
    overrides["log"]["redact_headers"] = ["X-Custom-Secret"]
    try:
        tg = tollgates.fresh(overrides)
        s = {name: f"S{name}{secrets.token_hex(8)}" for name in (
            "authorization", "proxyauth", "cookie", "vault", "xapikey", "apikey", "custom",
            "q_api_key", "q_token", "q_password", "q_secret", "q_sig", "q_session", "q_credential", "q_auth")}
        cookie_seed = f"seed{marker}"
        set_cookie = hashlib.sha256(cookie_seed.encode()).hexdigest()
        query = (f"{marker}=1&api_key={s['q_api_key']}&access_token={s['q_token']}&password={s['q_password']}"
                 f"&client_secret={s['q_secret']}&X-Amz-Signature={s['q_sig']}&SessionId={s['q_session']}"
                 f"&X-Amz-Credential={s['q_credential']}&auth={s['q_auth']}&visible=plain{marker}"
                 f"&set_cookie={cookie_seed}")
        url = f"http://{ORIGIN_IP}/echo-headers?{query}"
        res = testbed.run_in(testbed.worker, [
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
            "-H", f"Authorization: Bearer {s['authorization']}",
            "-H", f"Proxy-Authorization: Basic {s['proxyauth']}",
            "-H", f"Cookie: sid={s['cookie']}; theme=dark",
            "-H", f"X-Vault-Token: {s['vault']}",
            "-H", f"x-api-key: {s['xapikey']}",
            "-H", f"API-Key: {s['apikey']}",
            "-H", f"X-Custom-Secret: {s['custom']}",
            "-H", f"X-Visible: hello{marker}",
            url], timeout=30)
        assert res.stdout == "200", res.stdout + res.stderr
        needles = list(s.values()) + [set_cookie]

        [flow] = tg.wait_flows(lambda r: marker in field(r, "url.full", ""), timeout=10)
        # While Elasticsearch refuses, the record sits in the spool: no secret there either.
        wait_until(lambda: _spool_bytes(spool) > 0, 15, message="record in the spool")
        time.sleep(1.5)
        spool_files = [p for p in spool.rglob("*")]
        assert not _files_containing(spool_files, needles), \
            f"secrets in spool files: {_files_containing(spool_files, needles)}"

        fake.mode(reset=True)
        d = wait_delivered(fake, spool, marker, [field(flow, "url.full")], timeout=30, tg=tg)
        [doc] = [x["source"] for x in d.docs]
        text = json.dumps(doc)
        leaked = [n for n in needles if n in text]
        assert not leaked, f"secrets in the Elasticsearch document: {leaked}\n{text}"
        grep = {n: fake.grep(n) for n in needles}
        assert not any(grep.values()), f"secrets in bulk requests received: {grep}"

        req = field(doc, "http.request.headers")
        resp = field(doc, "http.response.headers")
        for name in ("authorization", "proxy-authorization", "cookie", "x-vault-token", "x-api-key", "api-key",
                     "x-custom-secret"):
            if name == "proxy-authorization" and name not in req:
                continue  # a hop-by-hop credential may be dropped rather than recorded
            assert req.get(name) == REDACTED, f"request header {name}: {req.get(name)!r}"
        assert req.get("x-visible") == f"hello{marker}", req
        assert resp.get("set-cookie") == REDACTED, resp
        assert resp.get("content-type") == "application/json", resp
        for part in ("url.full", "url.query"):
            value = field(doc, part)
            assert f"visible=plain{marker}" in value, f"{part} lost a harmless parameter: {value}"
            for name in ("api_key", "access_token", "password", "client_secret", "X-Amz-Signature", "SessionId",
                         "X-Amz-Credential", "auth"):
                assert (f"{name}=[redacted]" in value or f"{name}=%5Bredacted%5D" in value), \
                    f"{part}: {name} not redacted: {value}"

        # ...and nowhere in the files: log.file, the spool (incl. dead letters), Tollgate's stderr.
        files = [tg.log_path, Path(tg.stderr_path)] + [p for p in spool.rglob("*")]
        hits = _files_containing(files, needles)
        assert not hits, f"secrets in files: {hits}"
        assert field(tg.wait_flows(lambda r: marker in field(r, "url.full", ""))[0], "http.request.headers")[
            "authorization"] == REDACTED
    finally:
        tollgates.stop()
        fake.stop()


# ---------------------------------------------------------------------------
# spool limits

def test_full_spool_with_drop_newest_keeps_serving_and_counts_drops(testbed, origin, tollgates, marker):
    long_test(240)
    fake = FakeES(testbed, name="fake-es-spoolfull")
    spool = testbed.tmp / f"spool-full-{marker}"
    try:
        fake.stop()
        # Entries are compressed (about 100 bytes a record here): 64 KiB holds far fewer than 5000.
        tg = tollgates.fresh(es_overrides(fake.url, spool, spool_bytes=65536, on_spool_full="drop_newest"))
        total = 5000
        r = load(testbed, f"/1k?{marker}-", total, concurrency=8)
        assert r["ok"] == total, f"the proxy must keep serving with the spool full: {r}"
        dropped = wait_until(lambda: metrics(tg).get("tollgate_es_records_dropped_total", 0), 15,
                             message="dropped records counted")
        assert _spool_bytes(spool) <= 65536, f"spool grew to {_spool_bytes(spool)} bytes"
        fake.start()

        def settled():
            m = metrics(tg)
            return m if m.get("tollgate_es_records_queued", 1) == 0 else None
        m = wait_until(settled, 60, interval=0.5, message="queue drained after Elasticsearch returned")
        got = fake.docs(contains=marker, field="url.full")
        assert len(got) == len(set(got)), "records stored twice"
        assert len(got) + m["tollgate_es_records_dropped_total"] == total, \
            f"{len(got)} delivered + {m['tollgate_es_records_dropped_total']} dropped != {total}"
        assert dropped > 0

        # Elasticsearch is back and the backlog shipped: the spool has room again, nothing more is dropped.
        after = traffic(testbed, marker, 200, tag="after")
        try:
            wait_delivered(fake, spool, f"{marker}after", after, timeout=30, tg=tg)
        except AssertionError as exc:
            m2 = metrics(tg)
            raise AssertionError(f"records made after Elasticsearch returned were not delivered: dropped_total "
                                 f"{m['tollgate_es_records_dropped_total']:.0f} -> {m2['tollgate_es_records_dropped_total']:.0f}, "
                                 f"spool_bytes {m2['tollgate_es_spool_bytes']:.0f} (limit 65536), spool files "
                                 f"{[(p.name, p.stat().st_size) for p in spool.iterdir()]}\n{exc}")
        assert metrics(tg)["tollgate_es_records_dropped_total"] == m["tollgate_es_records_dropped_total"]
    finally:
        tollgates.stop()
        fake.stop()


def test_full_spool_with_fail_closed_refuses_new_connections_and_loses_nothing(testbed, origin, tollgates, marker):
    long_test(240)
    fake = FakeES(testbed, name="fake-es-failclosed")
    spool = testbed.tmp / f"spool-failclosed-{marker}"
    probe = f"http://{ORIGIN_IP}/1k?{marker}probe"

    def probe_status():
        res = testbed.run_in(testbed.worker, ["curl", "-sS", "-m", "5", "-o", "/dev/null", "-w", "%{http_code}", probe],
                             timeout=15)
        return res.stdout.strip()

    try:
        fake.stop()
        tg = tollgates.fresh(es_overrides(fake.url, spool, spool_bytes=131072, on_spool_full="fail_closed"))
        load(testbed, f"/1k?{marker}-", 3000, concurrency=8)  # fills the 128 KiB spool; some may be refused
        wait_until(lambda: probe_status() == "000", 20, interval=0.5,
                   message="new connections refused while the spool is full")
        assert "spool" in tg.stderr_tail(50).lower(), f"no reason given on stderr:\n{tg.stderr_tail(20)}"
        made = [field(r, "url.full") for r in tg.flows() if f"{marker}-" in field(r, "url.full", "")]
        assert len(made) > 500, f"only {len(made)} requests were served before refusing"

        fake.start()
        try:
            wait_until(lambda: probe_status() == "200", 60, interval=0.5,
                       message="new connections served again once logging caught up")
        except TimeoutError:
            m = {k: v for k, v in metrics(tg).items() if k.startswith("tollgate_es_")}
            raise AssertionError(f"still refusing new connections 60 s after Elasticsearch returned; fake has "
                                 f"{fake.stats()['docs']} docs; metrics {m}; spool files "
                                 f"{[(p.name, p.stat().st_size) for p in spool.iterdir()]}")
        made = [field(r, "url.full") for r in tg.flows() if f"{marker}-" in field(r, "url.full", "")]
        d = wait_delivered(fake, spool, f"{marker}-", made, timeout=60, tg=tg)
        assert not d.dead, d.dead[:2]
        assert metrics(tg).get("tollgate_es_records_dropped_total", 0) == 0, "fail_closed must not drop records"
    finally:
        tollgates.stop()
        fake.stop()
