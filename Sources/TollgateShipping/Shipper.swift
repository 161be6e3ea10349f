#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateConfig
import TollgateIO

/// Ships flow records to Elasticsearch without ever blocking an event loop and without losing
/// them: loops hand records to a bounded queue as `_bulk` lines; a spool thread compresses what
/// is queued into entries of the disk spool; a sender thread reads the spool in order, sends
/// batches of entries joined into one gzip `_bulk` body, classifies every
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
    private let queue: Mutex<BulkRecords>
    fileprivate let counters = Mutex(Counters())
    private let refusing = Atomic<Bool>(false)
    private let stopping = Atomic<Bool>(false)
    private let running = Atomic<Int>(0)
    /// The in-memory hand-off holds at most this much before records wait on disk only.
    private static let queueBytes = 64 << 20

    public init(settings: ElasticsearchSettings) throws(SystemError) {
        self.settings = settings
        nodes = settings.urls.compactMap(Node.init(url:))
        queue = Mutex(BulkRecords())
        // Acknowledged bytes count against spool_bytes until their segment rolls: segments of
        // a quarter of the limit at most keep that share small.
        spool = try Spool(directory: settings.spool, segmentBytes: min(16 << 20, max(settings.spoolBytes / 4, 4096)))
        if spool.unacknowledged.records > 0 {
            Log.info("elasticsearch spool: \(spool.unacknowledged.records) record(s) from an earlier run will be delivered")
        }
    }

    /// True while `on_spool_full: fail_closed` refuses new connections.
    public var isRefusingConnections: Bool { refusing.load(ordering: .relaxed) }

    /// The configured index name, for the loops' `BulkLineWriter`s.
    public var index: String { settings.index }

    /// Called on an event loop: copies a loop iteration's records into the hand-off buffer and
    /// empties `lines`; never waits beyond that short critical section.
    public func submit(_ lines: inout BulkLineWriter) {
        let accepted = queue.withLock { queue -> Bool in
            guard queue.bytes.count + lines.writer.count <= Self.queueBytes else { return false }
            queue.append(lines)
            return true
        }
        if !accepted { counters.withLock { $0.dropped += lines.count } }
        lines.removeAll()
    }

    public var statistics: Statistics {
        let queued = queue.withLock { $0.count }
        let counts = counters.withLock { $0 }
        return Statistics(queued: queued + spool.unacknowledged.records, shipped: counts.shipped, retried: counts.retried,
                          deadLettered: counts.deadLettered, dropped: counts.dropped, spoolBytes: spool.totalBytes,
                          secondsSinceSuccess: counts.lastSuccess == 0 ? -1 : Double(monotonicNanoseconds() - counts.lastSuccess) / 1e9)
    }

    public func start() {
        running.store(2, ordering: .releasing)
        startThread(name: "tollgate-spool", background: true) { [self] in runSpoolWriter(); running.subtract(1, ordering: .releasing) }
        startThread(name: "tollgate-ship", background: true) { [self] in runSender(); running.subtract(1, ordering: .releasing) }
    }

    fileprivate var isStopping: Bool { stopping.load(ordering: .acquiring) }

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
        var batch = BulkRecords()
        var entry = SpoolEntryBuilder()
        while true {
            let done = stopping.load(ordering: .acquiring)
            queue.withLock { swap(&$0, &batch) }
            let wroteNothing = batch.count == 0
            if !wroteNothing {
                switch spoolAll(batch, using: &entry) {
                case .written:
                    if refusing.load(ordering: .relaxed) || reportedFull {
                        refusing.store(false, ordering: .releasing)
                        reportedFull = false
                        Log.info("elasticsearch spool has room again")
                    }
                case .full(let first):
                    if settings.failClosed {
                        requeue(batch, from: first)
                        refusing.store(true, ordering: .releasing)
                    } else {
                        counters.withLock { $0.dropped += batch.count - first }
                    }
                    if !reportedFull {
                        Log.error("elasticsearch spool is full (\(settings.spoolBytes) bytes): " +
                                  (settings.failClosed ? "refusing new connections" : "dropping the newest records (counted)"))
                        reportedFull = true
                    }
                case .failed(let first, let error):
                    // Disk full or broken: keep what we have in memory and try again shortly.
                    Log.error("elasticsearch spool \(settings.spool): \(error); records are held in memory")
                    requeue(batch, from: first)
                    batch.removeAll()
                    usleep(200_000)
                    continue
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
            // Every 5 ms while records come: at 20k records/s that is 130 KB, compressed while
            // still in cache (every 20 ms it was half a megabyte, read back from L3). Idle: 20 ms.
            usleep(wroteNothing ? 20_000 : 5_000)
        }
    }

    private enum SpoolOutcome {
        case written
        /// The spool's size limit was reached at record `first`.
        case full(first: Int)
        /// Writing failed at record `first`.
        case failed(first: Int, SystemError)
    }

    /// Writes `batch` as entries of at most a `_bulk` batch each, so the sender's batches are
    /// whole entries; near the size limit, entries shrink to what still fits.
    private func spoolAll(_ batch: BulkRecords, using entry: inout SpoolEntryBuilder) -> SpoolOutcome {
        var first = 0
        while first < batch.count {
            let used = spool.totalBytes
            // Full: nothing is compressed only to be dropped or held back.
            if used >= settings.spoolBytes { return .full(first: first) }
            let wanted = batch.prefix(from: first, maxRecords: settings.batchRecords, maxBytes: settings.batchBytes)
            // An empty spool takes an entry of one record whatever its size: a record larger
            // than the whole limit must not hold everything behind it forever.
            guard let records = entry.build(batch, wanted, fitting: used == 0 ? Int.max : settings.spoolBytes - used) else {
                return .full(first: first)
            }
            let written = entry.withEntry { bytes in Result { () throws(SystemError) in try spool.append(entry: bytes) } }
            if case .failure(let error) = written { return .failed(first: first, error) }
            first = records.upperBound
        }
        return .written
    }

    /// Puts records that could not be written back in front of the queue, in order.
    private func requeue(_ records: BulkRecords, from first: Int) {
        queue.withLock { $0.prepend(records, from: first) }
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
        var unreadable = (at: SpoolPosition(segment: 0, offset: 0), times: 0)
        var storage: [UInt8] = []
        while !stopping.load(ordering: .acquiring) {
            let end = spool.endPosition
            if cursor >= end { waitingSince = nil; usleep(20_000); continue }
            // Flush at the batch size, or once the oldest waiting record is flush_interval old;
            // decided from the spool's counts, so a batch is read (and checksummed) once.
            let now = monotonicNanoseconds()
            if waitingSince == nil { waitingSince = now }
            let waiting = spool.unacknowledged
            let full = waiting.records >= settings.batchRecords || waiting.plainBytes >= settings.batchBytes
            if !full && now - waitingSince! < settings.flushInterval { usleep(20_000); continue }
            let (batch, next) = spool.read(from: cursor, maxRecords: settings.batchRecords, maxBytes: settings.batchBytes,
                                           reusing: &storage)
            if batch.count == 0 {
                if next == cursor {
                    // An entry that cannot be read: a passing I/O error is tried again; damage
                    // that lasts a second is cut out, so it cannot hold back every record after it.
                    unreadable = (cursor, unreadable.at == cursor ? unreadable.times + 1 : 1)
                    if unreadable.times == 1 { Log.error("elasticsearch spool: cannot read the entry at \(cursor); retrying") }
                    if unreadable.times >= 5 && spool.salvage(at: cursor) { continue }
                    usleep(200_000)
                }
                cursor = next
                continue
            }
            guard sender.deliver(batch) else { return }
            cursor = next
            spool.acknowledge(batch, upTo: next)
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
    var bodies = BulkBody()
    /// The compressed bulk body, its memory reused from batch to batch.
    var body: [UInt8] = []

    init(shipper: Shipper, settings: ElasticsearchSettings, nodes: [Node], client: HTTPClient) {
        self.shipper = shipper
        self.settings = settings
        self.nodes = nodes
        self.client = client
    }

    /// Runs `body` on the shipper's counters.
    private func count(_ body: (inout Shipper.Counters) -> Void) { shipper.counters.withLock { body(&$0) } }

    /// Returns once every record of `batch` is delivered or dead-lettered; false only when
    /// stopping. The batch goes as its spooled chunks joined; only when some of its records need
    /// sending again or dead-lettering are they decompressed.
    mutating func deliver(_ batch: SpoolBatch) -> Bool {
        bodies.join(batch, into: &body)
        var records: BulkRecords?
        var tried = false
        let decompressed = { () -> BulkRecords? in
            if !tried {
                tried = true
                records = batch.records()
                if records == nil { Log.error("elasticsearch spool: a batch of \(batch.count) record(s) does not decompress") }
            }
            return records
        }
        return deliver(Array(0..<batch.count), encoded: true, of: decompressed)
    }

    /// Sends the records at `indices` until each is settled. `encoded`: `body` holds them
    /// already; `records` gives the batch's records decompressed, for subsets and dead letters.
    private mutating func deliver(_ indices: [Int], encoded: Bool, of records: () -> BulkRecords?) -> Bool {
        var pending = indices
        var encodedCount = encoded ? pending.count : -1
        var gzipped = true
        while !pending.isEmpty {
            if shipper.isStopping { return false }
            let node = nodes[nodeIndex % nodes.count]
            // Compressing is the costly part: retries of the same records reuse the body.
            if encodedCount != pending.count {
                guard let all = records() else {
                    for index in pending { deadLetter(nil, index, status: 0, type: "spool_corrupt", reason: "") }
                    return true
                }
                gzipped = bodies.compress(all, pending, into: &body)
                encodedCount = pending.count
            }
            let outcome: Result<(status: Int, body: [UInt8]), ClientError>
            do {
                outcome = .success(try client.send(node: node, index: nodeIndex % nodes.count, method: "POST", path: "/_bulk",
                                                   headers: headers(gzip: gzipped), body: body, timeout: settings.requestTimeout))
            } catch {
                outcome = .failure(error)
            }
            switch outcome {
            case .failure(let error):
                retryWhole(pending.count, because: "\(node): \(error)")
            case .success(let response) where response.status == 413:
                // Too large for the node: halves go separately (a single record too large is dead).
                if pending.count == 1 {
                    deadLetter(records(), pending[0], status: 413, type: "request_entity_too_large", reason: "a single record exceeds the node's limit")
                    return true
                }
                let half = pending.count / 2
                guard deliver(Array(pending[..<half]), encoded: false, of: records) else { return false }
                return deliver(Array(pending[half...]), encoded: false, of: records)
            case .success(let response) where response.status == 429 || response.status >= 500:
                retryWhole(pending.count, because: "\(node): HTTP \(response.status)")
            case .success(let response) where response.status >= 300:
                if response.status == 400 {
                    // The node refused the request as a whole: no retry can fix it.
                    let reason = String(decoding: response.body.prefix(300), as: UTF8.self)
                    for index in pending { deadLetter(records(), index, status: 400, type: "bulk_request_rejected", reason: reason) }
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
                    default: deadLetter(records(), index, status: item.status, type: item.errorType ?? "rejected", reason: item.errorReason ?? "")
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

    /// Writes the record to `<spool>/dead-letter.ndjson` with the reason; without `records`
    /// (a chunk that does not decompress) it can only be counted.
    private func deadLetter(_ records: BulkRecords?, _ index: Int, status: Int, type: String, reason: String) {
        count { $0.deadLettered += 1 }
        guard let records else { return }
        let (action, document) = records.lines(index)
        let target = BulkRecords.target(ofAction: action)
        var line = JSONWriter()
        line.beginObject()
        line.field("_id", target.id)
        line.field("_index", target.index)
        line.field("status", status)
        line.object("error") { w in
            w.field("type", type)
            w.field("reason", reason)
        }
        line.key("document")
        document.withUnsafeBytes { line.rawJSON($0) }
        line.endObject()
        line.newline()
        let fd = open(settings.spool + "/dead-letter.ndjson", O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        if fd >= 0 {
            _ = try? writeAll(fd, line.bytes)
            close(fd)
        }
        Log.warning("elasticsearch refused record \(target.id) (\(status) \(type)): dead-lettered")
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

/// Builds gzip `_bulk` bodies: a batch's spooled chunks joined into one stream as they are, or
/// chosen records compressed anew (item retries, the halves of a batch too large).
public struct BulkBody {
    private var lines: [UInt8] = []
    private var compressed: [UInt8] = []

    public init() {}

    /// The whole batch: a gzip header, the chunks, an empty final block and the trailer (the
    /// CRC-32 of the chunks' plain lines, combined from theirs).
    public mutating func join(_ batch: SpoolBatch, into body: inout [UInt8]) {
        body.removeAll(keepingCapacity: true)
        Self.appendFrame(to: &body) { tg_gzip_start($0) }
        var crc: UInt32 = 0
        for chunk in batch.chunks {
            body.append(contentsOf: batch.bytes[chunk.range])
            crc = tg_crc32_combine(crc, chunk.plainCRC, chunk.plainLength)
        }
        Self.appendFrame(to: &body) { tg_gzip_finish_chunks($0, crc, UInt64(batch.plainBytes)) }
    }

    /// Appends what `write` puts in a scratch of TG_GZIP_FRAME_BYTES (a gzip header or end).
    static func appendFrame(to body: inout [UInt8], _ write: (UnsafeMutableRawPointer) -> Int) {
        var frame: (UInt64, UInt64) = (0, 0)
        let count = withUnsafeMutableBytes(of: &frame) { write($0.baseAddress!) }
        withUnsafeBytes(of: frame) { body.append(contentsOf: $0.prefix(count)) }
    }

    /// The records at `indices`, gzip-compressed (true), or plain if the encoder cannot take
    /// them (too large, or no memory for its table) (false).
    @discardableResult
    mutating func compress(_ records: BulkRecords, _ indices: [Int], into body: inout [UInt8]) -> Bool {
        lines.removeAll(keepingCapacity: true)
        for index in indices { lines.append(contentsOf: records.bytes[records.byteRange(index..<(index + 1))]) }
        let bound = tg_gzip_bound(lines.count)
        // Only grown, never refilled with zeros.
        if compressed.count < bound { compressed.append(contentsOf: repeatElement(0, count: bound - compressed.count)) }
        let size = lines.withUnsafeBytes { input in compressed.withUnsafeMutableBytes { tg_gzip(input.baseAddress, input.count, $0.baseAddress, bound) } }
        body.removeAll(keepingCapacity: true)
        guard size > 0 else {
            body.append(contentsOf: lines)
            return false
        }
        body.append(contentsOf: compressed[..<size])
        return true
    }
}
