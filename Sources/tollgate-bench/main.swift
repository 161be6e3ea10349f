// tollgate-bench: in-process benchmarks (policy evaluation, record encoding and batching).
// Figures, not tests: run through bench/*.sh, which also records the command and machine.
import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateProxy
import TollgateShipping

/// Median of per-call nanoseconds over `batches` timed batches of `perBatch` calls.
func medianNanoseconds(batches: Int, perBatch: Int, _ body: (Int) -> Void) -> Double {
    var samples: [Double] = []
    samples.reserveCapacity(batches)
    var i = 0
    for _ in 0..<batches {
        let start = monotonicNanoseconds()
        for _ in 0..<perBatch { body(i); i &+= 1 }
        samples.append(Double(monotonicNanoseconds() - start) / Double(perBatch))
    }
    samples.sort()
    return samples[samples.count / 2]
}

/// A rule set of `ruleCount` exact-host rules spread over `agentCount` agents in 10 groups.
func makePolicy(ruleCount: Int, agentCount: Int) -> Policy {
    var agents = "agents:\n"
    for a in 0..<agentCount {
        agents += "  agent-\(a): { sources: [\"10.\((a >> 8) & 255).\(a & 255).1\"], groups: [g\(a % 10)] }\n"
    }
    var rules = "rules:\n"
    for r in 0..<ruleCount {
        let who = r % 3 == 0 ? "[\"*\"]" : (r % 3 == 1 ? "[g\(r % 10)]" : "[agent-\(r % agentCount)]")
        rules += "  - { name: r\(r), agents: \(who), hosts: [\"host\(r).example.com\", \"*.svc\(r).example.net\"], ports: [443], methods: [GET, POST], paths: [\"/api/*\"], action: allow }\n"
    }
    let source = RuleLoader.parse(files: [("bench/agents.yaml", agents), ("bench/rules.yaml", rules)])
    precondition(source.errors.isEmpty, "\(source.errors.prefix(3))")
    return Policy(source: source, loadedAt: 0)
}

func benchPolicy() {
    print("| rules | agents | median ns / request decision (exact host) | median ns (suffix host) | median ns (default deny) |")
    print("|---:|---:|---:|---:|---:|")
    let ip = IPAddress(parsing: "203.0.113.10")!
    for ruleCount in [100, 1_000, 10_000] {
        let policy = makePolicy(ruleCount: ruleCount, agentCount: 1_000)
        let hosts = (0..<1024).map { "host\(($0 * 7919) % ruleCount).example.com" }
        let suffixHosts = (0..<1024).map { "a.b.svc\(($0 * 7919) % ruleCount).example.net" }
        var sink = 0
        let exact = medianNanoseconds(batches: 2000, perBatch: 500) { i in
            let d = policy.requestDecision(agent: i % 1000, host: hosts[i & 1023], ip: ip, port: 443, method: "GET", path: "/api/v1/items")
            sink &+= d.ruleIndex ?? -1
        }
        let suffix = medianNanoseconds(batches: 2000, perBatch: 500) { i in
            let d = policy.requestDecision(agent: i % 1000, host: suffixHosts[i & 1023], ip: ip, port: 443, method: "GET", path: "/api/x")
            sink &+= d.ruleIndex ?? -1
        }
        let miss = medianNanoseconds(batches: 2000, perBatch: 500) { i in
            let d = policy.requestDecision(agent: i % 1000, host: "unknown.example.org", ip: ip, port: 443, method: "GET", path: "/")
            sink &+= d.ruleIndex ?? -1
        }
        print("| \(ruleCount) | 1000 | \(fmt(exact)) | \(fmt(suffix)) | \(fmt(miss)) |")
        if sink == 42 { print("") }
    }
}

func benchRecords() {
    let head = Array("GET /v1/models?api_key=abc HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: agent/1.0\r\nAuthorization: Bearer x\r\nAccept: */*\r\n\r\n".utf8)
    let request = head.withUnsafeBytes { try! HeadParser.parseRequest($0, length: $0.count, limits: HeadLimits()) }
    // What an nginx origin answers to /1k, as in the namespace benchmarks.
    let responseHead = Array(("HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 18:11:42 GMT\r\n" +
                              "Content-Type: application/octet-stream\r\nContent-Length: 1024\r\nLast-Modified: Wed, 25 Nov 2026 18:10:00 GMT\r\n" +
                              "Connection: keep-alive\r\nETag: \"6745a1b8-400\"\r\nAccept-Ranges: bytes\r\n\r\n").utf8)
    let response = responseHead.withUnsafeBytes { try! HeadParser.parseResponse($0, length: $0.count, limits: HeadLimits(), requestIsHead: false) }
    var record = FlowRecord(start: wallClockMilliseconds(), action: .httpRequest, source: SocketAddress(parsing: "10.99.0.2:40000")!,
                            networkProtocol: .http, agent: "worker-1", mode: .transparent)
    record.method = "GET"
    record.urlScheme = .https
    record.urlDomain = "api.example.com"
    record.urlPath = "/v1/models"
    record.urlQuery = "api_key=[redacted]"
    record.statusCode = 200
    record.requestBodyBytes = 0
    record.responseBodyBytes = 1024
    record.destinationIP = IPAddress(parsing: "203.0.113.10")
    record.destinationPort = 443
    record.requestHeaders = request.headers
    record.responseHeaders = response.headers
    record.decision = .allow
    record.ruleName = "model-apis"
    let observer = FlowRecord.Observer(hostname: "orchestrator", version: "0.1.0")
    let redaction = Redaction(extraHeaders: [])
    let count = 400_000
    var writer = JSONWriter()
    var lines = BulkLineWriter(index: "autocode-traffic")
    var queue = BulkRecords()
    var entry = SpoolEntryBuilder()
    var bulk = BulkBody()
    var body: [UInt8] = []
    var spooledBytes = 0
    var bytesOut = 0
    let prefix = UInt64.random(in: 0...UInt64.max)
    // The shipper's whole path minus I/O: encode as _bulk lines, hand off (10 records per loop
    // iteration), compress into a spool entry (CRCs included), read back as a batch and join it
    // into the gzip _bulk body.
    var time = clockSeconds()
    for n in 0..<count {
        // What varies from record to record (identical records would flatter gzip).
        record.timestampMilliseconds += 1
        record.sourcePort = UInt16(32768 + n % 28000)
        record.durationNanoseconds = UInt64(90_000 + (n &* 7919) % 900_000)
        let id = RecordID(prefix: prefix, counter: UInt64(n))
        lines.beginRecord(timestampMilliseconds: record.timestampMilliseconds, id: id)
        record.encode(into: &lines.writer, id: id, observer: observer, redaction: redaction)
        lines.endRecord()
        if lines.count == 10 {
            queue.append(lines)
            lines.removeAll()
        }
        if queue.count >= 5000 {
            entry.build(queue, 0..<queue.count)
            spooledBytes += entry.size
            entry.withEntry { bulk.join(SpoolBatch(entry: $0), into: &body) }
            bytesOut += body.count
            queue.removeAll()
        }
    }
    time = clockSeconds() - time
    let encodeOnly = { () -> Double in
        let t0 = clockSeconds()
        for n in 0..<count {
            writer.reset()
            record.encode(into: &writer, id: RecordID(prefix: prefix, counter: UInt64(n)), observer: observer, redaction: redaction)
        }
        return clockSeconds() - t0
    }()
    print("| stage | records | thread CPU seconds | records / s (one core) |")
    print("|---|---:|---:|---:|")
    print("| encode to ECS JSON | \(count) | \(fmt(encodeOnly)) | \(Int(Double(count) / encodeOnly)) |")
    print("| encode + hand-off as _bulk lines + spool entries of 5000 (deflate, CRCs) + gzip body joined | \(count) | \(fmt(time)) | \(Int(Double(count) / time)) |")
    print("(record \(writer.count) bytes; spool entries \(spooledBytes / 1024) KiB; bulk bodies \(bytesOut / 1024) KiB)")
}

/// CPU time of this thread, in seconds (the benchmarks are single-threaded).
/// The proxy's per-request head work without I/O: parse the request head and write it
/// upstream, parse the response head and write it toward the client (the heads of the
/// namespace benchmarks' `/1k` exchange).
func benchHeads() {
    let requestBytes = Array("GET /1k HTTP/1.1\r\nHost: 203.0.113.10\r\nUser-Agent: agent/1.0\r\nAccept: */*\r\n\r\n".utf8)
    let responseBytes = Array(("HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Wed, 25 Nov 2026 18:11:42 GMT\r\n" +
                               "Content-Type: application/octet-stream\r\nContent-Length: 1024\r\nLast-Modified: Wed, 25 Nov 2026 18:10:00 GMT\r\n" +
                               "Connection: keep-alive\r\nETag: \"6745a1b8-400\"\r\nAccept-Ranges: bytes\r\n\r\n").utf8)
    let limits = HeadLimits()
    let count = 1_000_000
    var out: [UInt8] = []
    out.reserveCapacity(1024)
    var written = 0
    let time = clockSeconds()
    for _ in 0..<count {
        let request = requestBytes.withUnsafeBytes { try! HeadParser.parseRequest($0, length: $0.count, limits: limits) }
        out.removeAll(keepingCapacity: true)
        HeadWriter.writeRequest(request, target: "/1k", addHost: nil, framing: request.framing, into: &out)
        written &+= out.count
        let response = responseBytes.withUnsafeBytes { try! HeadParser.parseResponse($0, length: $0.count, limits: limits, requestIsHead: false) }
        out.removeAll(keepingCapacity: true)
        HeadWriter.writeResponse(response, framing: response.framing, close: false, upgrade: false, into: &out)
        written &+= out.count
    }
    let seconds = clockSeconds() - time
    print("| stage | exchanges | thread CPU seconds | exchanges / s (one core) | ns per exchange |")
    print("|---|---:|---:|---:|---:|")
    print("| parse + write request head, parse + write response head | \(count) | \(fmt(seconds)) | \(Int(Double(count) / seconds)) | \(Int(seconds / Double(count) * 1e9)) |")
    print("(\(requestBytes.count)-byte request head, \(responseBytes.count)-byte response head; \(written / count) bytes written per exchange)")
}

func clockSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func fmt(_ value: Double) -> String {
    let scaled = (value * 100).rounded() / 100
    return "\(scaled)"
}

switch CommandLine.arguments.dropFirst().first {
case "policy": benchPolicy()
case "records": benchRecords()
case "heads": benchHeads()
default:
    print("usage: tollgate-bench policy|records|heads")
}

import Glibc
