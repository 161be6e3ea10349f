#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateConfig
import TollgateIO

/// Ships flow records to Elasticsearch without ever blocking an event loop and without losing
/// them: loops hand records to a bounded queue; a spool thread writes them to the disk spool;
/// a sender thread reads the spool in order, sends compressed `_bulk` batches, classifies every
/// item, retries what is retryable with capped backoff, dead-letters what never will succeed,
/// and acknowledges (deletes) spool segments only behind delivered records.
public final class Shipper: Sendable {
    /// Counters for `/metrics`.
    public struct Statistics: Sendable {
        public var queued = 0
        public var shipped = 0
        public var retried = 0
        public var deadLettered = 0
        public var dropped = 0
        public var spoolBytes = 0
        /// Seconds since the last successful bulk request, -1 before the first.
        public var secondsSinceSuccess: Double = -1
    }

    fileprivate struct Counters {
        var shipped = 0, retried = 0, deadLettered = 0, dropped = 0
        var lastSuccess: UInt64 = 0
    }

    private let settings: ElasticsearchSettings
    private let nodes: [Node]
    private let spool: Spool
    private let queue = Mutex(FramedRecords())
    fileprivate let counters = Mutex(Counters())
    private let refusing = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Int>(0)
    /// The in-memory hand-off holds at most this much before records wait on disk only.
    private static let queueBytes = 64 << 20

    public init(settings: ElasticsearchSettings) throws(SystemError) {
        self.settings = settings
        nodes = settings.urls.compactMap(Node.init(url:))
        spool = try Spool(directory: settings.spool)
        if spool.unacknowledgedRecords > 0 {
            Log.info("elasticsearch spool: \(spool.unacknowledgedRecords) record(s) from an earlier run will be delivered")
        }
    }

    /// True while `on_spool_full: fail_closed` refuses new connections.
    public var isRefusingConnections: Bool { refusing.load(ordering: .relaxed) }

    /// Called on an event loop: copies the document into the hand-off buffer and returns; never
    /// waits beyond that short critical section.
    public func submit(timestampMilliseconds: Int64, id: RecordID, document: UnsafeRawBufferPointer) {
        let accepted = queue.withLock { queue -> Bool in
            guard queue.bytes.count + document.count <= Self.queueBytes else { return false }
            queue.append(timestampMilliseconds: timestampMilliseconds, id: id, document: document)
            return true
        }
        if !accepted { counters.withLock { $0.dropped += 1 } }
    }

    public var statistics: Statistics {
        let queued = queue.withLock { $0.count }
        let counts = counters.withLock { $0 }
        return Statistics(queued: queued + spool.unacknowledgedRecords, shipped: counts.shipped, retried: counts.retried,
                          deadLettered: counts.deadLettered, dropped: counts.dropped, spoolBytes: spool.totalBytes,
                          secondsSinceSuccess: counts.lastSuccess == 0 ? -1 : Double(monotonicNanoseconds() - counts.lastSuccess) / 1e9)
    }

    public func start() {
        running.store(2, ordering: .releasing)
        startThread(name: "tollgate-spool", background: true) { [self] in runSpoolWriter(); running.subtract(1, ordering: .releasing) }
        startThread(name: "tollgate-ship", background: true) { [self] in runSender(); running.subtract(1, ordering: .releasing) }
    }

    /// Moves what is queued to disk and stops; unsent records are delivered by the next run.
    public func stop(timeout: UInt64 = 5_000_000_000) {
        stopping.store(true, ordering: .releasing)
        let deadline = monotonicNanoseconds() + timeout
        while running.load(ordering: .acquiring) > 0 && monotonicNanoseconds() < deadline { usleep(10_000) }
    }

    // MARK: Spool writer

    private func runSpoolWriter() {
        var lastSync = monotonicNanoseconds()
        var reportedFull = false
        // Swapped with the queue each round, so neither buffer is reallocated in the steady state.
        var batch = FramedRecords()
        while true {
            let done = stopping.load(ordering: .acquiring)
            queue.withLock { swap(&$0, &batch) }
            let wroteNothing = batch.count == 0
            if !wroteNothing {
                batch.seal()
                let (fitBytes, fits) = batch.prefix(upToBytes: settings.spoolBytes - spool.totalBytes)
                do {
                    try spool.append(batch, byteCount: fitBytes, records: fits)
                } catch {
                    // Disk full or broken: keep what we have in memory and try again shortly.
                    Log.error("elasticsearch spool \(settings.spool): \(error); records are held in memory")
                    requeue(&batch)
                    usleep(200_000)
                    continue
                }
                if fits < batch.count {
                    if settings.failClosed {
                        batch.removeFirst(bytes: fitBytes, records: fits)
                        requeue(&batch)
                        refusing.store(true, ordering: .releasing)
                    } else {
                        counters.withLock { $0.dropped += batch.count - fits }
                    }
                    if !reportedFull {
                        Log.error("elasticsearch spool is full (\(settings.spoolBytes) bytes): " +
                                  (settings.failClosed ? "refusing new connections" : "dropping the newest records (counted)"))
                        reportedFull = true
                    }
                } else if refusing.load(ordering: .relaxed) || reportedFull {
                    refusing.store(false, ordering: .releasing)
                    reportedFull = false
                    Log.info("elasticsearch spool has room again")
                }
                batch.removeAll()
            } else if refusing.load(ordering: .relaxed) && spool.totalBytes < settings.spoolBytes * 9 / 10 {
                refusing.store(false, ordering: .releasing)
                reportedFull = false
            }
            if monotonicNanoseconds() - lastSync > 200_000_000 {
                spool.sync()
                lastSync = monotonicNanoseconds()
            }
            if done && wroteNothing { spool.sync(); return }
            usleep(20_000)
        }
    }

    /// Puts records that could not be written back in front of the queue, in order.
    private func requeue(_ records: inout FramedRecords) {
        queue.withLock { $0.prepend(records) }
        records.removeAll()
    }

    // MARK: Sender

    private func runSender() {
        let client: HTTPClient
        do { client = try HTTPClient(caFile: settings.caFile) } catch {
            Log.error("elasticsearch: \(error); records stay in the spool")
            return
        }
        var sender = Sender(shipper: self, settings: settings, nodes: nodes, client: client)
        var cursor = spool.acknowledgedPosition
        var waitingSince: UInt64?
        var storage: [UInt8] = []
        while !stopping.load(ordering: .acquiring) {
            let end = spool.endPosition
            if cursor >= end { waitingSince = nil; usleep(20_000); continue }
            // Flush at the batch size, or once the oldest waiting record is flush_interval old;
            // decided from the spool's counts, so a batch is read (and checksummed) once.
            let now = monotonicNanoseconds()
            if waitingSince == nil { waitingSince = now }
            let full = spool.unacknowledgedRecords >= settings.batchRecords || spool.bytes(after: cursor) >= settings.batchBytes
            if !full && now - waitingSince! < settings.flushInterval { usleep(20_000); continue }
            let (batch, next) = spool.read(from: cursor, maxRecords: settings.batchRecords, maxBytes: settings.batchBytes,
                                           reusing: &storage)
            if batch.count == 0 { cursor = next; continue }
            guard sender.deliver(batch, Array(0..<batch.count), stopping: stopping) else { return }
            cursor = next
            spool.acknowledge(upTo: next, records: batch.count)
            storage = batch.bytes  // unshared once this batch goes: the next read reuses it
            waitingSince = nil
        }
    }
}

/// The sending half: one batch at a time until every record in it is settled.
private struct Sender {
    let shipper: Shipper
    let settings: ElasticsearchSettings
    let nodes: [Node]
    let client: HTTPClient
    var nodeIndex = 0
    var failures = 0
    var encoder: BulkEncoder
    /// The compressed bulk body, its memory reused from batch to batch.
    var body: [UInt8] = []

    init(shipper: Shipper, settings: ElasticsearchSettings, nodes: [Node], client: HTTPClient) {
        self.shipper = shipper
        self.settings = settings
        self.nodes = nodes
        self.client = client
        encoder = BulkEncoder(index: settings.index)
    }

    /// Runs `body` on the shipper's counters.
    private func count(_ body: (inout Shipper.Counters) -> Void) { shipper.counters.withLock { body(&$0) } }

    /// Returns once every record of `batch` at `indices` is delivered or dead-lettered; false
    /// only when stopping.
    mutating func deliver(_ batch: SpoolBatch, _ indices: [Int], stopping: borrowing Atomic<Bool>) -> Bool {
        var pending = indices
        var encodedCount = -1
        var compressed = true
        while !pending.isEmpty {
            if stopping.load(ordering: .acquiring) { return false }
            let node = nodes[nodeIndex % nodes.count]
            // Encoding and compressing is the costly part: retries of the same records reuse it.
            if encodedCount != pending.count {
                compressed = encoder.encode(batch, pending, into: &body)
                encodedCount = pending.count
            }
            let outcome: Result<(status: Int, body: [UInt8]), ClientError>
            do {
                outcome = .success(try client.send(node: node, index: nodeIndex % nodes.count, method: "POST", path: "/_bulk",
                                                   headers: headers(gzip: compressed), body: body, timeout: settings.requestTimeout))
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .failure(let error):
                retryWhole(pending.count, because: "\(node): \(error)")
            case .success(let response) where response.status == 413:
                // Too large for the node: halves go separately (a single record too large is dead).
                if pending.count == 1 {
                    deadLetter(batch, pending[0], status: 413, type: "request_entity_too_large", reason: "a single record exceeds the node's limit")
                    return true
                }
                let half = pending.count / 2
                guard deliver(batch, Array(pending[..<half]), stopping: stopping) else { return false }
                return deliver(batch, Array(pending[half...]), stopping: stopping)
            case .success(let response) where response.status == 429 || response.status >= 500:
                retryWhole(pending.count, because: "\(node): HTTP \(response.status)")
            case .success(let response) where response.status >= 300:
                if response.status == 400 {
                    // The node refused the request as a whole: no retry can fix it.
                    let reason = String(decoding: response.body.prefix(300), as: UTF8.self)
                    for index in pending { deadLetter(batch, index, status: 400, type: "bulk_request_rejected", reason: reason) }
                    return true
                }
                retryWhole(pending.count, because: "\(node): HTTP \(response.status) (check credentials and URL)")
            case .success(let response):
                if BulkResponse.reportsNoErrors(response.body) {
                    count { counters in
                        counters.shipped += pending.count
                        counters.lastSuccess = monotonicNanoseconds()
                    }
                    failures = 0
                    return true
                }
                guard let items = BulkResponse.items(response.body, expected: pending.count) else {
                    retryWhole(pending.count, because: "\(node): unreadable _bulk response")
                    continue
                }
                var retry: [Int] = []
                var delivered = 0
                for (index, item) in zip(pending, items) {
                    switch item.status {
                    case 200..<300, 409: delivered += 1
                    case 429, 500...: retry.append(index)
                    default: deadLetter(batch, index, status: item.status, type: item.errorType ?? "rejected", reason: item.errorReason ?? "")
                    }
                }
                count { counters in
                    counters.shipped += delivered
                    counters.retried += retry.count
                    counters.lastSuccess = monotonicNanoseconds()
                }
                failures = retry.isEmpty ? 0 : failures + 1
                pending = retry
                if !pending.isEmpty { backoff() }
            }
        }
        return true
    }

    private mutating func retryWhole(_ records: Int, because reason: String) {
        if failures == 0 || failures % 10 == 0 { Log.warning("elasticsearch bulk failed (\(reason)); retrying \(records) record(s)") }
        count { $0.retried += records }
        failures += 1
        nodeIndex += 1
        client.disconnect()
        backoff()
    }

    /// Capped exponential backoff with jitter (half to full of the step).
    private func backoff() {
        let step = min(Double(settings.retryMax), 100_000_000 * pow(2, Double(min(failures, 20))))
        let jittered = step * (0.5 + Double.random(in: 0..<0.5))
        usleep(UInt32(min(jittered / 1000, 60_000_000)))
    }

    private func headers(gzip: Bool) -> [(String, String)] {
        var list = [("Content-Type", "application/x-ndjson")]
        if gzip { list.append(("Content-Encoding", "gzip")) }
        return list + authorizationHeader(settings)
    }

    private mutating func deadLetter(_ batch: SpoolBatch, _ index: Int, status: Int, type: String, reason: String) {
        let id = String(decoding: batch.id(at: index), as: UTF8.self)
        var line = JSONWriter()
        line.beginObject()
        line.field("_id", id)
        line.field("_index", encoder.indexName(batch.timestampMilliseconds(at: index)))
        line.field("status", status)
        line.object("error") { w in
            w.field("type", type)
            w.field("reason", reason)
        }
        line.key("document")
        batch.document(at: index).withUnsafeBytes { line.rawJSON($0) }
        line.endObject()
        line.newline()
        let fd = open(settings.spool + "/dead-letter.ndjson", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if fd >= 0 {
            _ = try? writeAll(fd, line.bytes)
            close(fd)
        }
        count { $0.deadLettered += 1 }
        Log.warning("elasticsearch refused record \(id) (\(status) \(type)): dead-lettered")
    }
}

/// The Authorization header for the configured credentials: `ApiKey`, else Basic, else none.
func authorizationHeader(_ settings: ElasticsearchSettings) -> [(String, String)] {
    if let apiKey = settings.apiKey { return [("Authorization", "ApiKey \(apiKey)")] }
    if let user = settings.username {
        return [("Authorization", "Basic \(base64(Array("\(user):\(settings.password ?? "")".utf8)))")]
    }
    return []
}

func base64(_ bytes: [UInt8]) -> String {
    let table = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
    var out: [UInt8] = []
    var index = 0
    while index < bytes.count {
        let chunk = bytes[index..<min(index + 3, bytes.count)]
        var value = 0
        for (k, byte) in chunk.enumerated() { value |= Int(byte) << (16 - 8 * k) }
        for k in 0..<4 {
            out.append(k <= chunk.count ? table[(value >> (18 - 6 * k)) & 63] : UInt8(ascii: "="))
        }
        index += 3
    }
    return String(decoding: out, as: UTF8.self)
}

/// Builds gzip-compressed `_bulk` bodies straight from spooled bytes: a `create` action with
/// the record's own `_id` and its daily index, then the document, each line ending in a newline.
public struct BulkEncoder {
    let index: String
    /// Per day: the index name and the action line's start naming it.
    private var days: [Int: (indexName: String, actionPrefix: [UInt8])] = [:]
    private var ndjson: [UInt8] = []
    private var compressed: [UInt8] = []

    public init(index: String) { self.index = index }

    /// The `_bulk` body for the records of `batch` at `indices`, in `body`: gzip-compressed
    /// (true), or plain if zlib could not allocate its state (false).
    @discardableResult
    public mutating func encode(_ batch: SpoolBatch, _ indices: [Int], into body: inout [UInt8]) -> Bool {
        ndjson.removeAll(keepingCapacity: true)
        let suffix = Array("\"}}\n".utf8)
        for index in indices {
            ndjson.append(contentsOf: day(batch.timestampMilliseconds(at: index)).actionPrefix)
            ndjson.append(contentsOf: batch.bytes[batch.idRange(index)])
            ndjson.append(contentsOf: suffix)
            ndjson.append(contentsOf: batch.bytes[batch.documentRange(index)])
            ndjson.append(0x0A)
        }
        let bound = tg_gzip_bound(ndjson.count)
        // Only grown, never refilled with zeros: a fresh worst-case-sized body per batch cost
        // more than compressing into it.
        if compressed.count < bound { compressed.append(contentsOf: repeatElement(0, count: bound - compressed.count)) }
        let size = ndjson.withUnsafeBytes { input in compressed.withUnsafeMutableBytes { tg_gzip(input.baseAddress, input.count, $0.baseAddress, bound) } }
        body.removeAll(keepingCapacity: true)
        guard size > 0 else {
            body.append(contentsOf: ndjson)
            return false
        }
        body.append(contentsOf: compressed[..<size])
        return true
    }

    /// `<index>-YYYY.MM.DD` in UTC, from the record's own timestamp.
    mutating func indexName(_ milliseconds: Int64) -> String { day(milliseconds).indexName }

    /// The record's day: its index name and `{"create":{"_index":"<name>","_id":"`.
    private mutating func day(_ milliseconds: Int64) -> (indexName: String, actionPrefix: [UInt8]) {
        let day = Int(milliseconds / 86_400_000)
        if let cached = days[day] { return cached }
        let (year, month, dayOfMonth) = civilDate(daysSinceEpoch: day)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let name = "\(index)-\(year).\(two(month)).\(two(dayOfMonth))"
        let entry = (indexName: name, actionPrefix: Array("{\"create\":{\"_index\":\"\(name)\",\"_id\":\"".utf8))
        days[day] = entry
        return entry
    }
}
