// TollgateShipping: flow records to Elasticsearch — a disk spool that survives crashes, a
// shipper that batches, compresses and retries off the event loops, and the index setup.
#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateIO

/// Builds spool entries: records' `_bulk` lines compressed into one chunk, framed and checksummed.
/// Entry: magic, 3 reserved bytes, body length (u32 LE), CRC-32C of the body (u32 LE); body:
/// record count, plain length and CRC-32 of the plain lines (u32 LE each), then the lines as one
/// raw deflate chunk (tg_deflate_chunk), so the sender joins chunks into a gzip body as they are.
/// Not copyable: it owns the deflate encoder's table, which is one thread's.
public struct SpoolEntryBuilder: ~Copyable {
    /// Only grown, never refilled with zeros: a worst-case-sized buffer per entry cost more than
    /// compressing into it.
    private var buffer: [UInt8] = []
    public private(set) var size = 0
    /// The deflate encoder's hash table, kept from entry to entry: clearing it for every entry
    /// cost (at 128 KiB) a sixth of compressing one.
    private let table: OpaquePointer

    public init() {
        guard let table = tg_deflate_table_new() else { fatalError("out of memory for the deflate table") }
        self.table = table
    }

    deinit { tg_deflate_table_free(table) }

    /// Compresses the records of `range`, or the longest leading part of it whose entry is at
    /// most `maxSize` bytes (halving the part until it fits); returns the records the entry
    /// holds, nil when not even the first one fits.
    public mutating func build(_ records: BulkRecords, _ range: Range<Int>, fitting maxSize: Int) -> Range<Int>? {
        var part = range
        while true {
            build(records, part)
            if size <= maxSize { return part }
            if part.count == 1 { return nil }
            part = part.lowerBound..<(part.lowerBound + part.count / 2)
        }
    }

    /// Compresses the records of `range` into the entry.
    public mutating func build(_ records: BulkRecords, _ range: Range<Int>) {
        let plain = records.byteRange(range)
        let bodyStart = Spool.headerSize + Spool.chunkFieldsSize
        let needed = bodyStart + tg_gzip_bound(plain.count)
        if buffer.count < needed { buffer.append(contentsOf: repeatElement(0, count: needed - buffer.count)) }
        size = records.bytes.withUnsafeBytes { source -> Int in
            let lines = UnsafeRawBufferPointer(rebasing: source[plain])
            return buffer.withUnsafeMutableBytes { entry -> Int in
                let chunk = tg_deflate_chunk(table, lines.baseAddress, lines.count, entry.baseAddress! + bodyStart, entry.count - bodyStart)
                // Fails only past 4 GiB of input; a chunk is at most batch_bytes (512 MiB at most).
                precondition(chunk >= 0, "a spool chunk of \(lines.count) bytes did not compress")
                let bodyLength = Spool.chunkFieldsSize + chunk
                entry.storeBytes(of: UInt32(Spool.magic).littleEndian, as: UInt32.self)  // and the reserved zeros
                entry.storeBytes(of: UInt32(bodyLength).littleEndian, toByteOffset: 4, as: UInt32.self)
                entry.storeBytes(of: UInt32(range.count).littleEndian, toByteOffset: Spool.headerSize, as: UInt32.self)
                entry.storeBytes(of: UInt32(lines.count).littleEndian, toByteOffset: Spool.headerSize + 4, as: UInt32.self)
                entry.storeBytes(of: tg_crc32(0, lines.baseAddress, lines.count).littleEndian, toByteOffset: Spool.headerSize + 8, as: UInt32.self)
                let crc = tg_crc32c(entry.baseAddress! + Spool.headerSize, bodyLength)
                entry.storeBytes(of: crc.littleEndian, toByteOffset: 8, as: UInt32.self)
                return Spool.headerSize + bodyLength
            }
        }
    }

    /// The entry built last, valid only inside `body`.
    public func withEntry<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try buffer.withUnsafeBytes { try body(UnsafeRawBufferPointer(rebasing: $0[..<size])) }
    }
}

/// Entries read back from the spool: one contiguous copy of their bytes and where each chunk
/// lies in it. A whole batch is sent as its chunks joined, never decompressed; records are
/// decompressed only for item-level retries and dead letters.
public struct SpoolBatch: Sendable {
    let bytes: [UInt8]
    let chunks: [Chunk]
    /// Records in the batch.
    public let count: Int
    /// Bytes of the batch's `_bulk` lines, uncompressed.
    public let plainBytes: Int

    struct Chunk {
        let range: Range<Int>
        let records: Int
        let plainLength: Int
        let plainCRC: UInt32
    }

    /// The batch of the whole entries in `bytes` (the spool checked them, or this process made them).
    init(bytes: [UInt8]) {
        var chunks: [Chunk] = []
        _ = bytes.withUnsafeBytes { raw in
            Spool.forEachEntry(in: raw) { offset, length in
                let fields = offset + Spool.headerSize
                func field(_ at: Int) -> UInt32 { UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: fields + at, as: UInt32.self)) }
                chunks.append(Chunk(range: (fields + Spool.chunkFieldsSize)..<(fields + length), records: Int(field(0)),
                                    plainLength: Int(field(4)), plainCRC: field(8)))
                return true
            }
        }
        self.bytes = bytes
        self.chunks = chunks
        count = chunks.reduce(0) { $0 + $1.records }
        plainBytes = chunks.reduce(0) { $0 + $1.plainLength }
    }

    /// The batch of one entry, without a trip through the disk (benchmarks, tests).
    public init(entry: UnsafeRawBufferPointer) { self.init(bytes: Array(entry)) }

    /// The records decompressed, or nil if a chunk does not inflate to what its fields say.
    func records() -> BulkRecords? {
        var plain = [UInt8](repeating: 0, count: plainBytes + 1)
        var at = 0
        for chunk in chunks {
            let size = bytes.withUnsafeBytes { source in
                plain.withUnsafeMutableBytes { out in
                    tg_inflate_chunk(source.baseAddress! + chunk.range.lowerBound, chunk.range.count, out.baseAddress! + at, out.count - at)
                }
            }
            guard size == chunk.plainLength else { return nil }
            at += size
        }
        plain.removeLast()
        guard let records = BulkRecords(lines: plain), records.count == count else { return nil }
        return records
    }
}

/// A place in the spool: a segment number and a byte offset in it.
public struct SpoolPosition: Comparable, Sendable, CustomStringConvertible {
    public var segment: UInt64
    public var offset: Int
    public static func < (a: SpoolPosition, b: SpoolPosition) -> Bool { (a.segment, a.offset) < (b.segment, b.offset) }
    public var description: String { "\(segment):\(offset)" }
}

/// A segmented append-only log of records on disk, in compressed entries (see
/// `SpoolEntryBuilder`): about 30 times fewer bytes to write, hold through an outage and read
/// back than the documents themselves. Each entry carries its length and a CRC-32C,
/// so a torn tail after a crash is cut off, and damage inside a segment is cut out without the
/// valid entries after it (`keepValidEntries`); a segment is deleted only once every
/// record in it was acknowledged. The acknowledged position is kept in `ack` (write + rename).
/// What this run wrote to the active segment is also kept in memory, so the sender, which
/// normally follows the writer closely, reads it back without a system call or a checksum pass;
/// the files are read only for what an earlier run left and after the active segment rolled.
/// Thread-safe: one writer thread appends, one sender thread reads and acknowledges.
public final class Spool: Sendable {
    static let headerSize = 12
    /// An entry body's fixed fields before its chunk: records, plain length, plain CRC-32.
    static let chunkFieldsSize = 12
    /// 0xA7: compressed chunks of records. (0xA5 and 0xA6, one uncompressed record per entry,
    /// were never released.)
    static let magic: UInt8 = 0xA7
    /// Segments roll over at this size so acknowledged data is freed in steps.
    private let segmentBytes: Int

    private struct State {
        var segments: [UInt64: Int] = [:]
        var active: UInt64 = 1
        var activeFD: CInt = -1
        var end = SpoolPosition(segment: 1, offset: 0)
        var acked = SpoolPosition(segment: 1, offset: 0)
        var records = 0
        var plainBytes = 0
        var dirty = false
        /// The active segment's bytes from `recentOffset` on, as written by this run.
        var recent: [UInt8] = []
        var recentOffset = 0
    }

    public let directory: String
    private let state = Mutex(State())
    /// The sizes `/metrics` and the writers ask for, copied out after every change: an event
    /// loop serving `/metrics` must not wait on the lock the writer holds through write(2).
    private let publishedBytes = Atomic<Int>(0)
    private let publishedRecords = Atomic<Int>(0)
    private let publishedPlainBytes = Atomic<Int>(0)

    /// Opens (creating) the spool directory and recovers what a previous run left: entries
    /// after the last acknowledged position are delivered again (their `_id`s make that safe).
    /// `segmentBytes`: the size at which segments roll over; acknowledged bytes of the active
    /// segment stay on disk until it rolls, so a small spool needs small segments.
    public init(directory: String, segmentBytes: Int = 16 << 20) throws(SystemError) {
        self.directory = directory
        self.segmentBytes = segmentBytes
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw SystemError(call: "mkdir(\(directory))", errno: Errno(rawValue: errno)) }
        try state.withLock { (state) throws(SystemError) in
            try recover(&state)
            publish(state)
        }
    }

    /// Bytes of all segment files.
    public var totalBytes: Int { publishedBytes.load(ordering: .relaxed) }
    /// Records appended and not yet acknowledged, and their `_bulk` lines' uncompressed size:
    /// whether a batch is due, without reading it.
    public var unacknowledged: (records: Int, plainBytes: Int) {
        (publishedRecords.load(ordering: .relaxed), publishedPlainBytes.load(ordering: .relaxed))
    }
    public var endPosition: SpoolPosition { state.withLock { $0.end } }
    public var acknowledgedPosition: SpoolPosition { state.withLock { $0.acked } }

    /// Appends one entry (from `SpoolEntryBuilder`) in one write; the caller enforces the size limit.
    public func append(entry: UnsafeRawBufferPointer) throws(SystemError) {
        let byteCount = entry.count
        let (records, plainBytes) = Self.chunkCounts(entry, at: 0)
        try state.withLock { (state) throws(SystemError) in
            if state.activeFD < 0 || state.segments[state.active, default: 0] >= segmentBytes {
                try roll(&state)
            }
            do throws(SystemError) {
                try writeAll(state.activeFD, entry)
            } catch {
                // A partial write (disk full) must not stay: the next append would land behind
                // bytes no offset accounts for.
                _ = ftruncate(state.activeFD, off_t(state.segments[state.active, default: 0]))
                throw error
            }
            if state.recent.count + byteCount <= segmentBytes {
                state.recent.append(contentsOf: entry)
            } else {
                // Bounded like a segment: past that, this write is read back from the file.
                state.recent.removeAll(keepingCapacity: true)
                state.recentOffset = state.segments[state.active, default: 0] + byteCount
            }
            state.segments[state.active, default: 0] += byteCount
            state.end = SpoolPosition(segment: state.active, offset: state.segments[state.active]!)
            state.records += records
            state.plainBytes += plainBytes
            state.dirty = true
            publish(state)
        }
    }

    /// Copies the sizes out of `state` (called with the lock held, after every change).
    private func publish(_ state: State) {
        publishedBytes.store(state.segments.values.reduce(0, +), ordering: .relaxed)
        publishedRecords.store(state.records, ordering: .relaxed)
        publishedPlainBytes.store(state.plainBytes, ordering: .relaxed)
    }

    /// fsync of the active segment when something was written since the last call.
    public func sync() {
        // A duplicate, synced outside the lock (which /metrics takes on an event loop): a roll
        // by the sender's acknowledgement may close the original meanwhile, and its number
        // be reused, but the duplicate still names the segment.
        let fd = state.withLock { state -> CInt in
            defer { state.dirty = false }
            return state.dirty && state.activeFD >= 0 ? dup(state.activeFD) : -1
        }
        if fd >= 0 {
            _ = fdatasync(fd)
            close(fd)
        }
    }

    /// Reads whole entries from `position` up to the end written so far: at least one, then as
    /// many as keep the batch within `maxRecords` and `maxBytes` of uncompressed lines.
    public func read(from position: SpoolPosition, maxRecords: Int, maxBytes: Int) -> (batch: SpoolBatch, next: SpoolPosition) {
        var storage: [UInt8] = []
        return read(from: position, maxRecords: maxRecords, maxBytes: maxBytes, reusing: &storage)
    }

    /// `read`, filling `storage`'s memory (taken, emptied, and handed back through the batch's
    /// `bytes`): batches read from the files would otherwise be fresh, page-faulting mappings each time.
    func read(from position: SpoolPosition, maxRecords: Int, maxBytes: Int, reusing storage: inout [UInt8]) -> (batch: SpoolBatch, next: SpoolPosition) {
        var bytes = storage
        storage = []
        bytes.removeAll(keepingCapacity: true)
        var cursor = position
        var records = 0, plainBytes = 0
        let fixedSize = Self.headerSize + Self.chunkFieldsSize
        while records < maxRecords && plainBytes < maxBytes {
            let (end, active, next) = state.withLock { state in
                (cursor.segment == state.active ? state.end.offset : (state.segments[cursor.segment] ?? 0), state.active,
                 state.segments.keys.filter { $0 > cursor.segment }.min())
            }
            if cursor.offset >= end {
                // A finished segment: go on with the next one (the active one is never finished).
                guard cursor.segment != active, let next else { break }
                cursor = SpoolPosition(segment: next, offset: 0)
                continue
            }
            // The entry's fixed part first: whether it still fits in the batch, before its chunk is read.
            let start = bytes.count
            let headerFromMemory = copy(cursor.segment, from: cursor.offset, upTo: min(end, cursor.offset + fixedSize), into: &bytes)
            guard bytes.count - start == fixedSize else { bytes.removeLast(bytes.count - start); break }
            let (size, entryRecords, entryPlainBytes) = bytes.withUnsafeBytes { raw in
                (Self.headerSize + Self.bodyLength(raw, at: start), Self.chunkCounts(raw, at: start).records, Self.chunkCounts(raw, at: start).plainBytes)
            }
            if records > 0 && (records + entryRecords > maxRecords || plainBytes + entryPlainBytes > maxBytes) {
                bytes.removeLast(fixedSize)
                break
            }
            let restFromMemory = copy(cursor.segment, from: cursor.offset + fixedSize, upTo: min(end, cursor.offset + size), into: &bytes)
            let valid = bytes.withUnsafeBytes { raw in
                headerFromMemory && restFromMemory ? Self.framedEntrySize(raw, at: start) : Self.entrySize(raw, at: start)
            }
            guard valid == size else {
                bytes.removeLast(bytes.count - start)
                break
            }
            records += entryRecords
            plainBytes += entryPlainBytes
            cursor.offset += size
        }
        return (SpoolBatch(bytes: bytes), cursor)
    }

    /// Everything before `position`, the entries of `batch`, is delivered: forget it, deleting
    /// whole segments.
    public func acknowledge(_ batch: SpoolBatch, upTo position: SpoolPosition) {
        let doomed: [UInt64] = state.withLock { state in
            state.acked = max(state.acked, position)
            state.records = max(0, state.records - batch.count)
            state.plainBytes = max(0, state.plainBytes - batch.plainBytes)
            // All delivered: counts of records lost to damage (see `salvage`) end here.
            if state.acked >= state.end { state.records = 0; state.plainBytes = 0 }
            var old = state.segments.keys.filter { $0 < position.segment }
            // Everything written is delivered: start a fresh segment so this one's space is
            // freed now (a full spool must empty as soon as Elasticsearch catches up).
            if state.acked >= state.end && state.segments[state.active, default: 0] > 0 {
                old.append(state.active)
                if (try? roll(&state)) == nil { old.removeLast() }
            }
            for segment in old { state.segments[segment] = nil }
            publish(state)
            return old
        }
        for segment in doomed { unlink(path(segment)) }
        persistAck(position)
    }

    // MARK: Files

    private func path(_ segment: UInt64) -> String {
        let digits = String(segment)
        return directory + "/" + String(repeating: "0", count: max(0, 12 - digits.count)) + digits + ".seg"
    }

    private func roll(_ state: inout State) throws(SystemError) {
        if state.activeFD >= 0 {
            _ = fdatasync(state.activeFD)
            close(state.activeFD)
            // Not left pointing at the closed number if the open below fails: the number may
            // be reused (a client socket) before the next append.
            state.activeFD = -1
            state.active += 1
        }
        let fd = open(path(state.active), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError(call: "open(\(path(state.active)))", errno: Errno(rawValue: errno)) }
        state.activeFD = fd
        state.segments[state.active] = state.segments[state.active] ?? 0
        state.end = SpoolPosition(segment: state.active, offset: state.segments[state.active]!)
        state.recent.removeAll(keepingCapacity: true)
        state.recentOffset = state.end.offset
    }

    private func recover(_ state: inout State) throws(SystemError) {
        guard let dir = opendir(directory) else { throw SystemError(call: "opendir(\(directory))", errno: Errno(rawValue: errno)) }
        var found: [UInt64] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name.hasSuffix(".seg"), let number = UInt64(name.dropLast(4)) { found.append(number) }
        }
        closedir(dir)
        found.sort()
        let ack = readAck()
        var kept: [UInt64] = []
        for segment in found {
            if let ack, segment < ack.segment {
                unlink(path(segment))
                continue
            }
            guard let bytes = readWholeSegment(segment) else {
                // Left as it is, its records uncounted: the sender mends it when it gets there.
                Log.error("elasticsearch spool \(path(segment)): cannot read it (\(Errno(rawValue: errno))); left for the sender")
                var info = stat()
                state.segments[segment] = stat(path(segment), &info) == 0 ? Int(info.st_size) : 0
                kept.append(segment)
                continue
            }
            // Entries before the acknowledged position were delivered: only those after it count.
            let valid = keepValidEntries(of: segment, bytes, from: ack?.segment == segment ? min(ack!.offset, bytes.count) : 0, running: false)!
            state.records += valid.records
            state.plainBytes += valid.plainBytes
            state.segments[segment] = valid.size
            kept.append(segment)
        }
        // Appends go to a fresh segment, so recovered files are only ever read again.
        state.active = (found.last ?? 0) + 1
        let first = kept.first ?? state.active
        state.acked = ack.map { $0.segment < first ? SpoolPosition(segment: first, offset: 0) : $0 } ?? SpoolPosition(segment: first, offset: 0)
        let fd = open(path(state.active), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SystemError(call: "open(\(path(state.active)))", errno: Errno(rawValue: errno)) }
        state.activeFD = fd
        state.segments[state.active] = 0
        state.end = SpoolPosition(segment: state.active, offset: 0)
    }

    /// The sender found nothing readable at `position` several times over: keeps the valid
    /// entries of its segment from there on, as recovery does. False when there is nothing to
    /// mend (the bytes read fine after all), not yet (the active segment: mended once it rolls)
    /// or not now (the file cannot be read or rewritten: tried again later). Records in the
    /// damaged bytes are lost, and stay counted as unacknowledged until the spool is empty:
    /// their count went with them.
    public func salvage(at position: SpoolPosition) -> Bool {
        // Finished segments are read and deleted by the sender alone, the caller: the file is read
        // and rewritten outside the lock, which the writer takes for every append.
        guard let size = state.withLock({ $0.active == position.segment ? nil : $0.segments[position.segment] }),
              let bytes = readWholeSegment(position.segment), bytes.count <= size,
              let valid = keepValidEntries(of: position.segment, bytes, from: min(position.offset, bytes.count), running: true),
              valid.size != size else { return false }
        state.withLock { state in
            state.segments[position.segment] = valid.size
            publish(state)
        }
        return true
    }

    /// Keeps every valid entry of a segment's `bytes` from `start` on, so that one bad block
    /// costs the records in it and no others. Damage with valid entries after it is logged as
    /// an error, saved to `damaged-<segment>-<offset>` beside the segments for a look by hand,
    /// and the segment rewritten without it. At start-up (`running` false) bytes at the end that
    /// are no whole entry are a write cut short by a crash: cut with a warning; and a segment
    /// that cannot be rewritten is cut at its first damage. While running, a segment that
    /// cannot be rewritten is left as it is (nil). Returns the segment's size and the records kept.
    private func keepValidEntries(of segment: UInt64, _ bytes: [UInt8], from start: Int, running: Bool) -> (size: Int, records: Int, plainBytes: Int)? {
        var entries: [Range<Int>] = [], damaged: [Range<Int>] = []
        bytes.withUnsafeBytes { raw in
            var offset = start
            while offset < raw.count {
                if let size = Self.entrySize(raw, at: offset) {
                    entries.append(offset..<(offset + size))
                    offset += size
                } else {
                    let next = Self.nextEntry(in: raw, after: offset)
                    damaged.append(offset..<next)
                    offset = next
                }
            }
        }
        func kept(_ size: Int, _ entries: [Range<Int>]) -> (size: Int, records: Int, plainBytes: Int) {
            bytes.withUnsafeBytes { raw in
                entries.reduce(into: (size, 0, 0)) { total, entry in
                    let counts = Self.chunkCounts(raw, at: entry.lowerBound)
                    total.1 += counts.records
                    total.2 += counts.plainBytes
                }
            }
        }
        guard let first = damaged.first else { return kept(bytes.count, entries) }
        if !running && damaged.count == 1 && first.upperBound == bytes.count {
            // Half an entry after a crash is expected; more than that is worth a look.
            Log.warning("elasticsearch spool \(path(segment)): \(first.count) byte(s) after offset \(first.lowerBound) " +
                        "are not a whole, valid entry (a write cut short by a crash, or damage); cut off")
            _ = truncate(path(segment), off_t(first.lowerBound))
            return kept(first.lowerBound, entries)
        }
        var rewritten = Array(bytes[..<start])
        for entry in entries { rewritten.append(contentsOf: bytes[entry]) }
        if let failure = replaceFile(path(segment), with: rewritten) {
            guard !running else { return nil }
            Log.error("elasticsearch spool \(path(segment)): damaged at offset \(first.lowerBound) and cannot be rewritten " +
                      "(\(failure)); cut off there")
            _ = truncate(path(segment), off_t(first.lowerBound))
            return kept(first.lowerBound, entries.filter { $0.upperBound <= first.lowerBound })
        }
        for span in damaged {
            let saved = directory + "/damaged-\(segment)-\(span.lowerBound)"
            let fd = open(saved, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
            if fd >= 0 { _ = try? writeAll(fd, Array(bytes[span])); close(fd) }
            Log.error("elasticsearch spool \(path(segment)): \(span.count) damaged byte(s) at offset \(span.lowerBound) " +
                      "(the records in them are lost); saved to \(saved), the valid entries around them kept")
        }
        return kept(rewritten.count, entries)
    }

    /// A whole segment file, or nil when it cannot be opened or read. Blocks that fail with an
    /// I/O error (a bad sector) read as zeros: damage like any other, cut out by `keepValidEntries`.
    private func readWholeSegment(_ segment: UInt64) -> [UInt8]? {
        let fd = open(path(segment), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return nil }
        var bytes = [UInt8](repeating: 0, count: Int(info.st_size))
        let complete = bytes.withUnsafeMutableBytes { buffer -> Bool in
            var offset = 0, nearBadBlock = false
            while offset < buffer.count {
                // Megabytes at a time; after an I/O error, the one 4 KiB block it came from.
                let block = min(4096 - offset % 4096, buffer.count - offset)
                let n = pread(fd, buffer.baseAddress! + offset, nearBadBlock ? block : min(1 << 20, buffer.count - offset), off_t(offset))
                if n > 0 {
                    offset += n
                    nearBadBlock = false
                } else if n < 0 && errno == EIO {
                    if nearBadBlock { offset += block }  // left as zeros
                    nearBadBlock.toggle()
                } else if !(n < 0 && errno == EINTR) {
                    return false
                }
            }
            return true
        }
        return complete ? bytes : nil
    }

    /// Appends the segment's bytes from `offset` to `end` to `bytes`: from memory when this run
    /// wrote them and they are still there (true), else from the file (false).
    private func copy(_ segment: UInt64, from offset: Int, upTo end: Int, into bytes: inout [UInt8]) -> Bool {
        if copyRecent(segment, from: offset, upTo: end, into: &bytes) { return true }
        readSegment(segment, from: offset, upTo: end, into: &bytes)
        return false
    }

    /// Appends the bytes from `offset` to `end` of the active segment to `bytes` when this run
    /// wrote them and they are still in memory; false when they must be read from the file.
    private func copyRecent(_ segment: UInt64, from offset: Int, upTo end: Int, into bytes: inout [UInt8]) -> Bool {
        state.withLock { state in
            guard segment == state.active, offset >= state.recentOffset, end <= state.recentOffset + state.recent.count else { return false }
            bytes.append(contentsOf: state.recent[(offset - state.recentOffset)..<(end - state.recentOffset)])
            return true
        }
    }

    /// Appends the segment's bytes from `offset` to `end` (or its size) to `bytes`.
    private func readSegment(_ segment: UInt64, from offset: Int, upTo end: Int, into bytes: inout [UInt8]) {
        let fd = open(path(segment), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return }
        defer { close(fd) }
        var size = stat()
        guard fstat(fd, &size) == 0 else { return }
        let length = min(Int(size.st_size), end) - offset
        guard length > 0 else { return }
        let start = bytes.count
        bytes.append(contentsOf: repeatElement(0, count: length))
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + start, length, off_t(offset)) }
        bytes.removeLast(length - max(n, 0))
    }

    /// fsync of the spool directory, so a rename in it outlives a crash.
    private func syncDirectory() {
        let fd = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { return }
        _ = fsync(fd)
        close(fd)
    }

    private func readAck() -> SpoolPosition? {
        let fd = open(directory + "/ack", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 64)
        let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, 64) }
        guard n > 0 else { return nil }
        let parts = String(decoding: buffer[0..<n], as: UTF8.self).split(separator: ":")
        guard parts.count == 2, let segment = UInt64(parts[0]), let offset = Int(parts[1].prefix { $0.isNumber }) else { return nil }
        return SpoolPosition(segment: segment, offset: offset)
    }

    private func persistAck(_ position: SpoolPosition) {
        // Not written: the previous position stays, and only re-delivers what its _ids dedupe.
        // Synced with the directory (see replaceFile), which also keeps the unlinks of the
        // segments it frees: once per bulk request, on the sender's thread.
        _ = replaceFile(directory + "/ack", with: Array("\(position.segment):\(position.offset)\n".utf8))
    }

    /// Replaces the file at `path` with `bytes` through `<path>.tmp`, synced and then renamed,
    /// the directory synced after the rename: a crash or power loss leaves the old file or the
    /// new one, whole. Nil on success; on failure the old file is left as it was and the error
    /// returned.
    private func replaceFile(_ path: String, with bytes: [UInt8]) -> Errno? {
        let temporary = path + ".tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return Errno(rawValue: errno) }
        var failure: Errno?
        do throws(SystemError) { try writeAll(fd, bytes) } catch { failure = error.errno }
        if failure == nil && fdatasync(fd) != 0 { failure = Errno(rawValue: errno) }
        close(fd)
        if failure == nil && rename(temporary, path) != 0 { failure = Errno(rawValue: errno) }
        if failure != nil { unlink(temporary) } else { syncDirectory() }
        return failure
    }

    // MARK: Entries

    /// The body length in the header of the entry at `offset` (which must hold a whole header).
    static func bodyLength(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int {
        Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
    }

    /// The records in the entry at `offset` and the size of their lines uncompressed (the
    /// entry's fixed part must be in `bytes`).
    static func chunkCounts(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> (records: Int, plainBytes: Int) {
        (Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + headerSize, as: UInt32.self))),
         Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + headerSize + 4, as: UInt32.self))))
    }

    /// Walks entries this process framed (their headers are trusted) from `start`: `body` gets
    /// each entry's offset and body length and returns false to stop there. Returns where the
    /// walk ended: the end of `bytes`, or the offset of the entry `body` stopped at.
    @discardableResult
    static func forEachEntry(in bytes: UnsafeRawBufferPointer, from start: Int = 0,
                             _ body: (_ offset: Int, _ bodyLength: Int) -> Bool) -> Int {
        var offset = start
        while offset < bytes.count {
            let length = bodyLength(bytes, at: offset)
            guard body(offset, length) else { break }
            offset += headerSize + length
        }
        return offset
    }

    /// The size of the entry at `offset` in bytes this process framed (no checksum pass), or nil
    /// when `bytes` ends before the whole entry.
    static func framedEntrySize(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        guard bytes.count - offset >= headerSize else { return nil }
        let size = headerSize + bodyLength(bytes, at: offset)
        return bytes.count - offset >= size ? size : nil
    }

    /// Where the next valid entry after `offset` starts (the end of `bytes` if none does): the
    /// magic byte and three zeros, then a header and body that check out.
    static func nextEntry(in bytes: UnsafeRawBufferPointer, after offset: Int) -> Int {
        var candidate = offset + 1
        while candidate + headerSize <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: candidate, as: UInt32.self) == UInt32(magic).littleEndian,
               entrySize(bytes, at: candidate) != nil {
                return candidate
            }
            candidate += 1
        }
        return bytes.count
    }

    /// The size of the valid entry at `offset`, or nil for a torn, corrupt or missing one.
    static func entrySize(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        guard let size = framedEntrySize(bytes, at: offset), bytes[offset] == magic,
              size >= headerSize + chunkFieldsSize else { return nil }
        let crc = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
        guard tg_crc32c(bytes.baseAddress! + offset + headerSize, size - headerSize) == crc else { return nil }
        return size
    }
}

