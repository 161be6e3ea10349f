#!/usr/bin/env python3
"""A scriptable, fault-injecting Elasticsearch `_bulk` server for Tollgate's shipper tests.

It speaks enough of the Elasticsearch HTTP API for a log shipper: `POST /_bulk` (and
`/<index>/_bulk`) with NDJSON `create`/`index` actions, gzip request bodies
(`Content-Encoding: gzip`), HTTP/1.1 keep-alive, `GET /`, `PUT|GET /_index_template/<name>`,
`PUT|GET /_ilm/policy/<name>`. Documents are stored by `_id`: a second `create` of the same
`_id` gets item status 409 (version_conflict_engine_exception), as in Elasticsearch.

Faults are switched on and off through a control API on the same port:

    POST /_fake/mode   JSON merged into the current mode ({"reset": true} first restores defaults)
    POST /_fake/reset  forget documents, requests and counters (and restore the default mode)
    GET  /_fake/stats  counters (see FakeState.stats)
    GET  /_fake/docs   stored documents [{_index, _id, source}]; ?contains=S keeps those whose
                       JSON contains S; ?field=a.b returns only that field's values
    GET  /_fake/requests   the request log (bulk bodies left out); ?last=N
    GET  /_fake/grep?s=S   occurrences of S in every decoded request body and header received
    GET  /_fake/history    {_id: [item statuses answered to each create of it, in order]}
    GET  /_fake/attempts   {_id: number of creates received}

Mode keys (defaults in DEFAULT_MODE):
    item_429_rate      each create item independently answered 429 with this probability
    item_429_match     items whose source contains this string are answered 429 ...
    item_429_times     ... this many times per _id (then accepted); -1 = always
    item_503_rate      like item_429_rate, with 503 (unavailable_shards_exception)
    reject_match       items whose source contains this string get 400 mapper_parsing_exception
    max_body_bytes     a bulk whose decoded body is longer gets a whole-request 413 (0 = off)
    fail_next          the next K bulk requests get a whole-request fail_status
    fail_status        500 (default), 503, 429, ...
    garbage_next       the next K bulk requests are processed, then answered 200 with a
                       non-JSON body (garbage_store false: not processed either)
    delay              seconds to sleep before answering every bulk request (items are
                       processed first: a client that gives up sees 409 on its retry)
    delay_next         like delay, only for the next K bulk requests (delay_next_seconds each)
    hang_next          the next K bulk requests are read and never answered (the connection
                       stays open until the server stops); hang_store: process items first
    hang_accept_next   the next K connections are accepted and never read nor answered
    hang               every bulk request is read and never answered (until switched off)
    require_auth       if set, bulk/setup requests whose Authorization differs get 401
    count_only         bulk items are counted (in stats "docs"), not parsed nor stored, and
                       all answered 201: a cheap sink for benchmarks, where parsing every
                       document in Python would take the CPU the load generator needs

Run standalone:  fake_es.py --listen 127.0.0.1:0 --ready FILE  (FILE gets {"port": N}).
Tests use FakeES (below) to start it inside a test-bed namespace and FakeESClient to steer it.
"""

import argparse
import copy
import gzip
import http.client
import json
import os
import random
import signal
import socket
import socketserver
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

DEFAULT_MODE = {
    "item_429_rate": 0.0,
    "item_429_match": None,
    "item_429_times": 1,
    "item_503_rate": 0.0,
    "reject_match": None,
    "max_body_bytes": 0,
    "fail_next": 0,
    "fail_status": 500,
    "garbage_next": 0,
    "garbage_store": True,
    "delay": 0.0,
    "delay_next": 0,
    "delay_next_seconds": 0.0,
    "hang": False,
    "hang_next": 0,
    "hang_store": False,
    "hang_accept_next": 0,
    "require_auth": None,
    "count_only": False,
    "seed": 1,
}

MAX_KEPT_BODIES = 512 * 1024 * 1024  # decoded bytes kept for /_fake/grep


class FakeState:
    def __init__(self):
        self.lock = threading.Lock()
        self.stop_event = threading.Event()
        self.reset()

    def reset(self):
        with self.lock:
            self.mode = copy.deepcopy(DEFAULT_MODE)
            self.rng = random.Random(self.mode["seed"])
            self.docs = {}  # _id -> (index, source text)
            self.order = []  # _ids in the order they were stored
            self.attempts = {}  # _id -> create attempts
            self.history = {}  # _id -> item statuses answered, in order
            self.item_faults = {}  # _id -> 429s answered through item_429_match
            self.requests = []
            self.bodies = []  # (request no, decoded body bytes), bounded by MAX_KEPT_BODIES
            self.body_bytes_kept = 0
            self.templates = {}
            self.policies = {}
            self.counters = {
                "connections": 0, "requests": 0, "bulk_requests": 0, "bulk_items": 0,
                "bulk_by_status": {}, "items_by_status": {}, "actions": {},
                "content_encodings": {}, "content_types": {}, "protocol_errors": [],
                "hung_requests": 0, "hung_connections": 0, "garbage_answers": 0,
                "delayed_answers": 0, "wire_bytes": 0, "decoded_bytes": 0, "counted_docs": 0,
            }

    def set_mode(self, update):
        with self.lock:
            if update.get("reset"):
                self.mode = copy.deepcopy(DEFAULT_MODE)
            for key, value in update.items():
                if key == "reset":
                    continue
                if key not in DEFAULT_MODE:
                    raise ValueError(f"unknown mode key {key!r}")
                self.mode[key] = value
            if "seed" in update:
                self.rng = random.Random(self.mode["seed"])
            return copy.deepcopy(self.mode)

    def take(self, key):
        """Decrement a `*_next` counter; True when this request is one of the K."""
        with self.lock:
            if self.mode[key] > 0:
                self.mode[key] -= 1
                return True
            return False

    def bump(self, name, key=None, n=1):
        with self.lock:
            if key is None:
                self.counters[name] += n
            else:
                bucket = self.counters[name]
                bucket[str(key)] = bucket.get(str(key), 0) + n

    def protocol_error(self, text):
        with self.lock:
            if len(self.counters["protocol_errors"]) < 100:
                self.counters["protocol_errors"].append(text)

    def stats(self):
        with self.lock:
            out = copy.deepcopy(self.counters)
            out["docs"] = len(self.docs) + self.counters["counted_docs"]
            out["create_attempts_max"] = max(self.attempts.values(), default=0)
            out["ids_attempted"] = len(self.attempts)
            out["mode"] = copy.deepcopy(self.mode)
            out["templates"] = sorted(self.templates)
            out["policies"] = sorted(self.policies)
            return out

    # -- bulk processing ---------------------------------------------------------
    def process_bulk(self, body, default_index=None):
        """Parse an NDJSON bulk body, apply the items; returns (items, errors)."""
        if body and not body.endswith(b"\n"):
            self.protocol_error("bulk body not terminated by a newline")
            raise BulkError(400, "illegal_argument_exception",
                            "The bulk request must be terminated by a newline [\\n]")
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        items = []
        errors = False
        i = 0
        while i < len(lines):
            raw_action = lines[i]
            i += 1
            if not raw_action.strip():
                self.protocol_error(f"empty action line at line {i}")
                continue
            try:
                action = json.loads(raw_action)
                (op, meta), = action.items()
            except (ValueError, AttributeError):
                self.protocol_error(f"bad action line {raw_action[:200]!r}")
                raise BulkError(400, "illegal_argument_exception", f"Malformed action/metadata line [{i}]")
            self.bump("actions", op)
            if op == "delete":
                items.append({op: {"_index": meta.get("_index", default_index), "_id": meta.get("_id"),
                                   "status": 404, "result": "not_found"}})
                continue
            if i >= len(lines):
                self.protocol_error("action without a source line")
                raise BulkError(400, "illegal_argument_exception", "Validation Failed: source is missing")
            raw_source = lines[i]
            i += 1
            item = self._apply(op, meta, raw_source, default_index)
            if item[op]["status"] >= 300:
                errors = True
            items.append(item)
        return items, errors

    def _apply(self, op, meta, raw_source, default_index):
        index = meta.get("_index") or default_index
        doc_id = meta.get("_id")
        text = raw_source.decode("utf-8", errors="replace")
        self.bump("bulk_items")

        def answer(status, err_type=None, reason=None, **extra):
            self.bump("items_by_status", status)
            if doc_id is not None:
                with self.lock:
                    self.history.setdefault(doc_id, []).append(status)
            body = {"_index": index, "_id": doc_id, "status": status, **extra}
            if err_type:
                body["error"] = {"type": err_type, "reason": reason, "index": index}
            return {op: body}

        try:
            source = json.loads(raw_source)
            if not isinstance(source, dict):
                raise ValueError("not an object")
        except ValueError as exc:
            self.protocol_error(f"source of {doc_id} is not a JSON object: {exc}")
            return answer(400, "document_parsing_exception", f"failed to parse: {exc}")
        if op not in ("create", "index"):
            self.protocol_error(f"unsupported action {op}")
            return answer(400, "illegal_argument_exception", f"unsupported action {op}")
        if doc_id is None:
            self.protocol_error("action without _id")
            doc_id = "auto-%d" % self.rng.getrandbits(64)
        if not index:
            self.protocol_error(f"action without _index for {doc_id}")
            return answer(400, "action_request_validation_exception", "index is missing")

        with self.lock:
            mode = self.mode
            self.attempts[doc_id] = self.attempts.get(doc_id, 0) + 1
            match = mode["item_429_match"]
            if match and match in text:
                used = self.item_faults.get(doc_id, 0)
                if mode["item_429_times"] < 0 or used < mode["item_429_times"]:
                    self.item_faults[doc_id] = used + 1
                    fault = 429
                else:
                    fault = None
            elif mode["item_429_rate"] and self.rng.random() < mode["item_429_rate"]:
                fault = 429
            elif mode["item_503_rate"] and self.rng.random() < mode["item_503_rate"]:
                fault = 503
            else:
                fault = None
            reject = mode["reject_match"]
        if fault == 429:
            return answer(429, "es_rejected_execution_exception",
                          "rejected execution of coordinating operation [fake: item 429]")
        if fault == 503:
            return answer(503, "unavailable_shards_exception", "[fake] primary shard is not active")
        if reject and reject in text:
            return answer(400, "mapper_parsing_exception",
                          f"failed to parse field [fake] of type [long] in document with id '{doc_id}'")
        with self.lock:
            if doc_id in self.docs:
                if op == "create":
                    exists = True
                else:
                    self.docs[doc_id] = (index, text)
                    exists = None
            else:
                self.docs[doc_id] = (index, text)
                self.order.append(doc_id)
                exists = False
        if exists:
            return answer(409, "version_conflict_engine_exception",
                          f"[{doc_id}]: version conflict, document already exists (current version [1])")
        return answer(201 if exists is False else 200, result="created" if exists is False else "updated",
                      _version=1, _seq_no=0, _primary_term=1,
                      _shards={"total": 1, "successful": 1, "failed": 0})


class BulkError(Exception):
    def __init__(self, status, err_type, reason):
        super().__init__(reason)
        self.status, self.err_type, self.reason = status, err_type, reason


class Hang(Exception):
    """Raised to leave a request unanswered."""


def _error_body(status, err_type, reason):
    return {"error": {"root_cause": [{"type": err_type, "reason": reason}], "type": err_type,
                      "reason": reason}, "status": status}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-es/1"
    disable_nagle_algorithm = True
    state: FakeState = None  # set on the subclass made by make_server

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        self.state.bump("connections")
        if self.state.mode["hang_accept_next"] > 0 and not self._is_control_connection():
            if self.state.take("hang_accept_next"):
                self.state.bump("hung_connections")
                self.state.stop_event.wait()
                raise ConnectionAbortedError("hung connection released")

    def _is_control_connection(self):
        """Peek (without consuming) at the first request line: the tests' own /_fake/ calls are
        never hung; for the client under test the connection still looks unread."""
        try:
            head = self.connection.recv(64, socket.MSG_PEEK)
        except OSError:
            return False
        return b" /_fake/" in head

    def handle(self):
        try:
            super().handle()
        except (ConnectionError, socket.timeout, OSError):
            pass

    # -- plumbing -------------------------------------------------------------------
    def _read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                size_line = self.rfile.readline(1024)
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(8)
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status, body, content_type="application/json"):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Elastic-Product", "Elasticsearch")
        # Head and body in one write.
        self._headers_buffer.append(b"\r\n")
        if self.command != "HEAD":
            self._headers_buffer.append(body)
        self.flush_headers()

    def _log(self, entry):
        st = self.state
        with st.lock:
            entry["n"] = len(st.requests) + 1
            entry["t"] = time.time()
            st.requests.append(entry)
            return entry["n"]

    def _keep_body(self, n, data):
        st = self.state
        with st.lock:
            if st.body_bytes_kept + len(data) <= MAX_KEPT_BODIES:
                st.bodies.append((n, data))
                st.body_bytes_kept += len(data)

    # -- dispatch --------------------------------------------------------------------
    def do_GET(self):
        self._dispatch()

    def do_POST(self):
        self._dispatch()

    def do_PUT(self):
        self._dispatch()

    def do_HEAD(self):
        self._dispatch()

    def do_DELETE(self):
        self._dispatch()

    def _dispatch(self):
        st = self.state
        st.bump("requests")
        url = urlsplit(self.path)
        path = url.path
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        wire = self._read_body()
        if path.startswith("/_fake/"):
            return self._control(path, query, wire)
        st.bump("wire_bytes", n=len(wire))
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if path.endswith("/_bulk"):
            st.bump("content_encodings", encoding or "identity")
            st.bump("content_types", (self.headers.get("Content-Type") or "").split(";")[0].strip())
        try:
            body = self._decode(wire, encoding)
        except (OSError, EOFError, zlib.error) as exc:
            st.protocol_error(f"undecodable {encoding} body: {exc}")
            n = self._log({"method": self.command, "path": path, "status": 400, "wire_bytes": len(wire)})
            return self._send(400, _error_body(400, "parse_exception", f"bad {encoding} body"))
        st.bump("decoded_bytes", n=len(body))
        entry = {"method": self.command, "path": path, "wire_bytes": len(wire), "bytes": len(body),
                 "headers": {k.lower(): v for k, v in self.headers.items()}}
        n = self._log(entry)
        if not st.mode["count_only"]:
            self._keep_body(n, json.dumps(entry["headers"]).encode() + b"\n" + body)

        required = st.mode["require_auth"]
        if required and path not in ("/",) and self.headers.get("Authorization") != required:
            entry["status"] = 401
            return self._send(401, _error_body(401, "security_exception", "missing authentication credentials"))

        try:
            if path == "/_bulk" or (path.endswith("/_bulk") and path.count("/") == 2):
                default_index = path.split("/")[1] if path != "/_bulk" else None
                status = self._bulk(body, default_index, entry)
            elif path == "/" and self.command in ("GET", "HEAD"):
                status = 200
                self._send(200, {"name": "fake-es", "cluster_name": "fake", "cluster_uuid": "fake",
                                 "version": {"number": "8.15.0", "build_flavor": "default",
                                             "lucene_version": "9.11.1"},
                                 "tagline": "You Know, for Search"})
            elif path.startswith("/_index_template/") or path.startswith("/_ilm/policy/"):
                status = self._setup_object(path, body)
            elif path.endswith("/_refresh") or path == "/_refresh":
                status = 200
                self._send(200, {"_shards": {"total": 1, "successful": 1, "failed": 0}})
            else:
                status = 400
                self._send(400, {"error": f"no handler found for uri [{path}] and method [{self.command}]"})
        except Hang:
            entry["status"] = "hung"
            st.stop_event.wait()
            self.close_connection = True
            return
        entry["status"] = status

    @staticmethod
    def _decode(wire, encoding):
        if encoding in ("", "identity"):
            return wire
        if encoding == "gzip":
            return gzip.decompress(wire)
        if encoding == "deflate":
            return zlib.decompress(wire)
        raise OSError(f"unsupported content encoding {encoding}")

    def _setup_object(self, path, body):
        st = self.state
        kind, name = ("templates", path[len("/_index_template/"):]) if path.startswith("/_index_template/") \
            else ("policies", path[len("/_ilm/policy/"):])
        store = getattr(st, kind)
        if self.command == "PUT" or self.command == "POST":
            try:
                doc = json.loads(body or b"null")
                if not isinstance(doc, dict):
                    raise ValueError("body must be an object")
            except ValueError as exc:
                self._send(400, _error_body(400, "parse_exception", str(exc)))
                return 400
            with st.lock:
                store[name] = doc
            self._send(200, {"acknowledged": True})
            return 200
        if self.command in ("GET", "HEAD"):
            with st.lock:
                doc = store.get(name)
            if doc is None:
                self._send(404, _error_body(404, "resource_not_found_exception", f"{name} not found"))
                return 404
            if kind == "templates":
                self._send(200, {"index_templates": [{"name": name, "index_template": doc}]})
            else:
                self._send(200, {name: {"version": 1, "policy": doc.get("policy", doc)}})
            return 200
        if self.command == "DELETE":
            with st.lock:
                store.pop(name, None)
            self._send(200, {"acknowledged": True})
            return 200
        self._send(405, _error_body(405, "method_not_allowed", self.command))
        return 405

    def _bulk(self, body, default_index, entry):
        st = self.state
        st.bump("bulk_requests")
        if self.command not in ("POST", "PUT"):
            self._send(405, _error_body(405, "method_not_allowed", "use POST"))
            st.bump("bulk_by_status", 405)
            return 405
        mode = st.mode
        limit = mode["max_body_bytes"]
        if limit and len(body) > limit:
            st.bump("bulk_by_status", 413)
            self._send(413, _error_body(413, "content_too_long_exception",
                                        f"request body is too large ({len(body)} > {limit})"))
            return 413
        if st.take("fail_next"):
            status = int(mode["fail_status"])
            st.bump("bulk_by_status", status)
            kind = {429: "es_rejected_execution_exception", 503: "unavailable_shards_exception"}.get(
                status, "internal_server_error")
            self._send(status, _error_body(status, kind, "[fake] whole-request failure"))
            return status
        hang = st.take("hang_next") or mode["hang"]
        if hang:
            st.bump("hung_requests")
            if mode["hang_store"]:
                try:
                    st.process_bulk(body, default_index)
                except BulkError:
                    pass
            raise Hang()
        garbage = st.take("garbage_next")
        if garbage and not mode["garbage_store"]:
            st.bump("garbage_answers")
            st.bump("bulk_by_status", 200)
            self._send(200, b"<html><body>502 Bad Gateway (not JSON at all)\x00\xff", "text/html")
            return 200
        if mode["count_only"]:
            # Every item is an action line and a document line.
            count = body.count(b"\n") // 2
            st.bump("counted_docs", n=count)
            st.bump("bulk_items", n=count)
            st.bump("bulk_by_status", 200)
            entry["items"] = count
            self._send(200, b'{"took":0,"errors":false,"items":[' + b",".join([b'{"create":{"status":201}}'] * count) + b"]}")
            return 200
        started = time.monotonic()
        try:
            items, errors = st.process_bulk(body, default_index)
        except BulkError as exc:
            st.bump("bulk_by_status", exc.status)
            self._send(exc.status, _error_body(exc.status, exc.err_type, exc.reason))
            return exc.status
        entry["items"] = len(items)
        entry["item_statuses"] = {}
        for item in items:
            (_, meta), = item.items()
            key = str(meta["status"])
            entry["item_statuses"][key] = entry["item_statuses"].get(key, 0) + 1
        if garbage:
            st.bump("garbage_answers")
            st.bump("bulk_by_status", 200)
            self._send(200, b'{"took":1,"errors":fals\x00e, "items":[{"create": garbage', "application/json")
            return 200
        sleep = mode["delay"]
        if st.take("delay_next"):
            sleep = max(sleep, mode["delay_next_seconds"])
        if sleep:
            st.bump("delayed_answers")
            if st.stop_event.wait(sleep):
                raise Hang()
        st.bump("bulk_by_status", 200)
        took = int((time.monotonic() - started) * 1000)
        self._send(200, {"took": took, "errors": errors, "items": items})
        return 200

    # -- control ----------------------------------------------------------------------
    def _control(self, path, query, body):
        st = self.state
        try:
            if path == "/_fake/mode":
                if self.command == "POST":
                    return self._send(200, st.set_mode(json.loads(body or b"{}")))
                return self._send(200, st.stats()["mode"])
            if path == "/_fake/reset":
                st.reset()
                return self._send(200, {"ok": True})
            if path == "/_fake/stats":
                return self._send(200, st.stats())
            if path == "/_fake/docs":
                return self._send(200, self._docs(query))
            if path == "/_fake/attempts":
                with st.lock:
                    return self._send(200, dict(st.attempts))
            if path == "/_fake/history":
                with st.lock:
                    return self._send(200, {k: list(v) for k, v in st.history.items()})
            if path == "/_fake/requests":
                with st.lock:
                    reqs = copy.deepcopy(st.requests)
                last = int(query.get("last", 0))
                return self._send(200, reqs[-last:] if last else reqs)
            if path == "/_fake/grep":
                needle = query.get("s", "").encode()
                with st.lock:
                    hits = [n for n, data in st.bodies if needle and needle in data]
                    kept = len(st.bodies)
                return self._send(200, {"hits": hits, "bodies_kept": kept})
            if path == "/_fake/templates":
                with st.lock:
                    return self._send(200, {"templates": st.templates, "policies": st.policies})
        except ValueError as exc:
            return self._send(400, {"error": str(exc)})
        return self._send(404, {"error": f"unknown control endpoint {path}"})

    def _docs(self, query):
        st = self.state
        contains = query.get("contains")
        field = query.get("field")
        with st.lock:
            rows = [(doc_id, st.docs[doc_id]) for doc_id in st.order]
        out = []
        for doc_id, (index, text) in rows:
            if contains and contains not in text:
                continue
            source = json.loads(text)
            if field:
                node = source
                for part in field.split("."):
                    node = node.get(part) if isinstance(node, dict) else None
                out.append(node)
            else:
                out.append({"_index": index, "_id": doc_id, "source": source})
        return out


class Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        pass  # clients that vanish and released hung connections are expected


def make_server(host="127.0.0.1", port=0, state=None, sock=None):
    """A Server (not yet serving) with its own FakeState; `sock`: an already bound socket."""
    state = state or FakeState()
    handler = type("BoundHandler", (Handler,), {"state": state})
    if sock is None:
        server = Server((host, port), handler)
    else:
        server = Server((host, port), handler, bind_and_activate=False)
        server.socket.close()
        server.socket = sock
        server.server_address = sock.getsockname()
        server.server_activate()
    server.state = state
    return server


# ---------------------------------------------------------------------------
# Steering from tests.
class FakeESClient:
    """Talks to a fake's control API over sockets made by `connect()` (e.g. inside a namespace)."""

    def __init__(self, connect):
        self._connect = connect

    def request(self, method, path, body=None, headers=None, timeout=30.0):
        sock = self._connect()
        sock.settimeout(timeout)
        conn = http.client.HTTPConnection("fake-es", timeout=timeout)
        conn.sock = sock
        try:
            data = json.dumps(body).encode() if isinstance(body, (dict, list)) else body
            hdrs = {"Content-Type": "application/json", "Connection": "close", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            raw = resp.read()
            return resp.status, raw
        finally:
            conn.close()

    def _json(self, method, path, body=None):
        status, raw = self.request(method, path, body)
        if status != 200:
            raise RuntimeError(f"fake ES {method} {path} -> {status}: {raw[:300]!r}")
        return json.loads(raw)

    def mode(self, **update):
        return self._json("POST", "/_fake/mode", update)

    def reset(self):
        return self._json("POST", "/_fake/reset", {})

    def stats(self):
        return self._json("GET", "/_fake/stats")

    def docs(self, contains=None, field=None):
        params = []
        if contains:
            params.append(f"contains={quote(contains)}")
        if field:
            params.append(f"field={quote(field)}")
        return self._json("GET", "/_fake/docs" + ("?" + "&".join(params) if params else ""))

    def attempts(self):
        return self._json("GET", "/_fake/attempts")

    def history(self):
        """{_id: [item status answered to each create of it, in order]}"""
        return self._json("GET", "/_fake/history")

    def requests(self, last=0):
        return self._json("GET", f"/_fake/requests?last={last}")

    def grep(self, needle):
        return self._json("GET", f"/_fake/grep?s={quote(needle)}")["hits"]

    def templates(self):
        return self._json("GET", "/_fake/templates")


class FakeES(FakeESClient):
    """fake_es.py running as a process inside a test-bed namespace (default: gateway)."""

    def __init__(self, testbed, name="fake-es", ns=None, host="127.0.0.1", port=0, mode=None):
        self.testbed = testbed
        self.ns = ns or testbed.gateway
        self.host = host
        self.name = name
        self.port = port
        self.proc = None
        super().__init__(lambda: testbed.connect(self.ns, (self.host, self.port)))
        self.start(mode)

    @property
    def url(self):
        return f"http://{self.host}:{self.port}"

    def start(self, mode=None):
        """(Re)start on the same port (a new process: documents and counters start empty)."""
        from testbed import wait_until
        ready = self.testbed.tmp / f"{self.name}.ready"
        ready.unlink(missing_ok=True)
        argv = [sys.executable, str(Path(__file__).resolve()), "--listen", f"{self.host}:{self.port}",
                "--ready", ready]
        if mode:
            argv += ["--mode", json.dumps(mode)]
        stderr = open(self.testbed.tmp / f"{self.name}.stderr", "ab")
        self.proc = self.testbed.popen_in(self.ns, argv, stdout=subprocess_devnull(), stderr=stderr)
        stderr.close()
        wait_until(lambda: ready.exists() or self.proc.poll() is not None, 10, message="fake ES ready")
        if self.proc.poll() is not None:
            raise RuntimeError(f"fake ES exited: {(self.testbed.tmp / f'{self.name}.stderr').read_text()}")
        self.port = json.loads(ready.read_text())["port"]
        return self

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def restart(self, mode=None):
        """A new process on the same port: empty state, every old connection closed."""
        self.stop()
        return self.start(mode)

    def stop(self):
        """Kill the server: its port is closed (connections refused) until start()."""
        if self.alive():
            self.proc.kill()
            self.proc.wait()


def subprocess_devnull():
    import subprocess
    return subprocess.DEVNULL


# ---------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: pick one)")
    ap.add_argument("--ready", help="write {\"port\": N} here once listening")
    ap.add_argument("--mode", help="initial mode, JSON")
    args = ap.parse_args(argv)
    host, _, port = args.listen.rpartition(":")
    server = make_server(host, int(port))
    if args.mode:
        server.state.set_mode(json.loads(args.mode))
    port = server.server_address[1]
    if args.ready:
        tmp = args.ready + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"port": port}, f)
        os.replace(tmp, args.ready)
    else:
        print(f"fake ES listening on http://{host}:{port}", flush=True)

    def stop(signum, frame):
        server.state.stop_event.set()
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.state.stop_event.set()
        server.server_close()


if __name__ == "__main__":
    main()
