// TollgateShipping: flow records to Elasticsearch — a disk spool that survives crashes, a
// shipper that batches, compresses and retries off the event loops, and the index setup.
#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateIO

/// A record's Elasticsearch `_id` (also its `event.id`): a random prefix chosen per loop at
/// start-up and that loop's counter, as 32 hex digits — unique across loops and restarts
/// without any coordination, and stable across retries so a redelivery is a harmless 409.
public struct RecordID: Sendable, Equatable {
    public let prefix: UInt64
    public let counter: UInt64

    public init(prefix: UInt64, counter: UInt64) {
        self.prefix = prefix
        self.counter = counter
    }

    /// As a JSON string value.
    public func write(into out: inout JSONWriter) {
        out.openString()
        out.hexDigits(prefix)
        out.hexDigits(counter)
        out.closeString()
    }

    static let hexCount = 32

    /// The 32 hex digits at `destination`.
    func writeHex(to destination: UnsafeMutablePointer<UInt8>) {
        writeHexDigits(prefix, to: destination)
        writeHexDigits(counter, to: destination + 16)
    }
}

/// Records framed as spool entries, back to back: what the loops hand to the shipper (one
/// copy of the document each, no per-record objects) and what the spool writes in one go.
/// Entry: magic, 3 reserved bytes, body length (u32 LE), CRC-32C of the body (u32 LE); body:
/// timestamp in Unix milliseconds (i64 LE), the 32-character id, the ECS document.
public struct FramedRecords: Sendable {
    public private(set) var bytes: [UInt8] = []
    public private(set) var count = 0
    /// Entries up to here carry their CRC; the rest get it from `seal()`, off the loops.
    private var sealedBytes = 0

    public init() {}

    public mutating func append(timestampMilliseconds: Int64, id: RecordID, document: UnsafeRawBufferPointer) {
        let bodyLength = 8 + RecordID.hexCount + document.count
        // Header and the body's fixed part are built on the stack, then appended with the
        // document: no zero-filling of bytes about to be overwritten.
        var fixed: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0, 0, 0)
        withUnsafeMutableBytes(of: &fixed) { raw in
            raw.storeBytes(of: Spool.magic, as: UInt8.self)
            raw.storeBytes(of: UInt32(bodyLength).littleEndian, toByteOffset: 4, as: UInt32.self)
            raw.storeBytes(of: timestampMilliseconds.littleEndian, toByteOffset: Spool.headerSize, as: Int64.self)
            id.writeHex(to: (raw.baseAddress! + Spool.headerSize + 8).assumingMemoryBound(to: UInt8.self))
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: raw[..<(Spool.headerSize + 8 + RecordID.hexCount)]))
        }
        bytes.append(contentsOf: document)
        count += 1
    }

    /// Computes the CRCs of entries appended since the last call.
    public mutating func seal() {
        let start = sealedBytes
        sealedBytes = bytes.withUnsafeMutableBytes { raw in
            Spool.forEachEntry(in: UnsafeRawBufferPointer(raw), from: start) { offset, length in
                let crc = tg_crc32c(raw.baseAddress! + offset + Spool.headerSize, length)
                raw.storeBytes(of: crc.littleEndian, toByteOffset: offset + 8, as: UInt32.self)
                return true
            }
        }
    }

    /// The leading entries that fit in `limit` bytes: their size and number.
    public func prefix(upToBytes limit: Int) -> (bytes: Int, records: Int) {
        var records = 0
        let end = bytes.withUnsafeBytes { raw in
            Spool.forEachEntry(in: raw) { offset, length in
                guard offset + Spool.headerSize + length <= limit else { return false }
                records += 1
                return true
            }
        }
        return (end, records)
    }

    /// Drops the leading `records` entries (`bytes` long, as `prefix` measured them).
    public mutating func removeFirst(bytes byteCount: Int, records: Int) {
        bytes.removeFirst(byteCount)
        count -= records
        sealedBytes = max(0, sealedBytes - byteCount)
    }

    /// Puts `earlier` back in front (records that could not be written yet keep their order).
    public mutating func prepend(_ earlier: FramedRecords) {
        bytes.insert(contentsOf: earlier.bytes, at: 0)
        count += earlier.count
        sealedBytes = earlier.sealedBytes == earlier.bytes.count ? sealedBytes + earlier.bytes.count : earlier.sealedBytes
    }

    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        count = 0
        sealedBytes = 0
    }
}

/// Entries read back from the spool: one contiguous copy of their bytes and where each body
/// lies in it. The sender builds `_bulk` bodies straight from these bytes.
public struct SpoolBatch: Sendable {
    let bytes: [UInt8]
    /// Body ranges in `bytes`, in spool order.
    let bodies: [Range<Int>]

    init(bytes: [UInt8], bodies: [Range<Int>]) {
        self.bytes = bytes
        self.bodies = bodies
    }

    /// The entries of `framed` as a batch without a trip through the disk (benchmarks, tests).
    public init(framed: FramedRecords) {
        var bodies: [Range<Int>] = []
        framed.bytes.withUnsafeBytes { raw -> Void in
            Spool.forEachEntry(in: raw) { offset, length in
                bodies.append((offset + Spool.headerSize)..<(offset + Spool.headerSize + length))
                return true
            }
        }
        self.init(bytes: framed.bytes, bodies: bodies)
    }

    public var count: Int { bodies.count }

    public func timestampMilliseconds(at index: Int) -> Int64 {
        bytes.withUnsafeBytes { Int64(littleEndian: $0.loadUnaligned(fromByteOffset: bodies[index].lowerBound, as: Int64.self)) }
    }

    public func id(at index: Int) -> ArraySlice<UInt8> { bytes[idRange(index)] }
    public func document(at index: Int) -> ArraySlice<UInt8> { bytes[documentRange(index)] }

    func idRange(_ index: Int) -> Range<Int> {
        let start = bodies[index].lowerBound + 8
        return start..<(start + RecordID.hexCount)
    }

    func documentRange(_ index: Int) -> Range<Int> { (bodies[index].lowerBound + 8 + RecordID.hexCount)..<bodies[index].upperBound }
}

/// A place in the spool: a segment number and a byte offset in it.
public struct SpoolPosition: Comparable, Sendable, CustomStringConvertible {
    public var segment: UInt64
    public var offset: Int
    public static func < (a: SpoolPosition, b: SpoolPosition) -> Bool { (a.segment, a.offset) < (b.segment, b.offset) }
    public var description: String { "\(segment):\(offset)" }
}

/// A segmented append-only log of records on disk. Each entry carries its length and a CRC-32C,
/// so a torn tail after a crash is detected and cut off; a segment is deleted only once every
/// record in it was acknowledged. The acknowledged position is kept in `ack` (write + rename).
/// What this run wrote to the active segment is also kept in memory, so the sender, which
/// normally follows the writer closely, reads it back without a system call or a checksum pass;
/// the files are read only for what an earlier run left and after the active segment rolled.
/// Thread-safe: one writer thread appends, one sender thread reads and acknowledges.
public final class Spool: Sendable {
    static let headerSize = 12
    /// 0xA6: entries checksummed with CRC-32C (0xA5, zlib CRC-32, was never released).
    static let magic: UInt8 = 0xA6
    /// Segments roll over at this size so acknowledged data is freed in steps.
    private static let segmentBytes = 16 << 20

    private struct State {
        var segments: [UInt64: Int] = [:]
        var active: UInt64 = 1
        var activeFD: CInt = -1
        var end = SpoolPosition(segment: 1, offset: 0)
        var acked = SpoolPosition(segment: 1, offset: 0)
        var records = 0
        var dirty = false
        /// The active segment's bytes from `recentOffset` on, as written by this run.
        var recent: [UInt8] = []
        var recentOffset = 0
    }

    public let directory: String
    private let state = Mutex(State())

    /// Opens (creating) the spool directory and recovers what a previous run left: entries
    /// after the last acknowledged position are delivered again (their `_id`s make that safe).
    public init(directory: String) throws(SystemError) {
        self.directory = directory
        if mkdir(directory, 0o700) != 0 && errno != EEXIST { throw SystemError(call: "mkdir(\(directory))", errno: Errno(rawValue: errno)) }
        try state.withLock { (state) throws(SystemError) in try recover(&state) }
    }

    /// Bytes of all segment files.
    public var totalBytes: Int { state.withLock { $0.segments.values.reduce(0, +) } }
    /// Records appended and not yet acknowledged (approximate after recovery: counted on replay).
    public var unacknowledgedRecords: Int { state.withLock { $0.records } }
    public var endPosition: SpoolPosition { state.withLock { $0.end } }

    /// Bytes of the entries after `position`, framing included: whether a batch is due, without reading it.
    public func bytes(after position: SpoolPosition) -> Int {
        state.withLock { state in
            state.segments.reduce(0) { total, entry in
                if entry.key < position.segment { return total }
                return total + (entry.key == position.segment ? max(0, entry.value - position.offset) : entry.value)
            }
        }
    }
    public var acknowledgedPosition: SpoolPosition { state.withLock { $0.acked } }

    /// Appends the first `records` sealed entries of `framed`, `byteCount` bytes, in one write;
    /// the caller enforces the size limit.
    public func append(_ framed: FramedRecords, byteCount: Int, records: Int) throws(SystemError) {
        guard records > 0 else { return }
        try state.withLock { (state) throws(SystemError) in
            if state.activeFD < 0 || state.segments[state.active, default: 0] >= Self.segmentBytes {
                try roll(&state)
            }
            do throws(SystemError) {
                try writeAll(state.activeFD, framed.bytes, count: byteCount)
            } catch {
                // A partial write (disk full) must not stay: the next append would land behind
                // bytes no offset accounts for.
                _ = ftruncate(state.activeFD, off_t(state.segments[state.active, default: 0]))
                throw error
            }
            if state.recent.count + byteCount <= Self.segmentBytes {
                framed.bytes.withUnsafeBytes { state.recent.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[..<byteCount])) }
            } else {
                // Bounded like a segment: past that, this write is read back from the file.
                state.recent.removeAll(keepingCapacity: true)
                state.recentOffset = state.segments[state.active, default: 0] + byteCount
            }
            state.segments[state.active, default: 0] += byteCount
            state.end = SpoolPosition(segment: state.active, offset: state.segments[state.active]!)
            state.records += records
            state.dirty = true
        }
    }

    /// fsync of the active segment when something was written since the last call.
    public func sync() {
        let fd = state.withLock { state -> CInt in
            defer { state.dirty = false }
            return state.dirty ? state.activeFD : -1
        }
        if fd >= 0 { _ = fdatasync(fd) }
    }

    /// Reads entries from `position` up to the end written so far, at most `maxRecords` of them
    /// and about `maxBytes` of documents.
    public func read(from position: SpoolPosition, maxRecords: Int, maxBytes: Int) -> (batch: SpoolBatch, next: SpoolPosition) {
        var storage: [UInt8] = []
        return read(from: position, maxRecords: maxRecords, maxBytes: maxBytes, reusing: &storage)
    }

    /// `read`, filling `storage`'s memory (taken, emptied, and handed back through the batch's
    /// `bytes`): batches of megabytes would otherwise be fresh, page-faulting mappings each time.
    func read(from position: SpoolPosition, maxRecords: Int, maxBytes: Int, reusing storage: inout [UInt8]) -> (batch: SpoolBatch, next: SpoolPosition) {
        var bytes = storage
        storage = []
        bytes.removeAll(keepingCapacity: true)
        var bodies: [Range<Int>] = []
        var cursor = position
        var documentBytes = 0
        while bodies.count < maxRecords && documentBytes < maxBytes {
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
            let chunkStart = bytes.count
            let chunkEnd = min(end, cursor.offset + max(maxBytes - documentBytes, 1 << 16))
            let fromMemory = copyRecent(cursor.segment, from: cursor.offset, upTo: chunkEnd, into: &bytes)
            if !fromMemory { readSegment(cursor.segment, from: cursor.offset, upTo: chunkEnd, into: &bytes) }
            var offset = chunkStart
            bytes.withUnsafeBytes { raw in
                while offset < raw.count && bodies.count < maxRecords && documentBytes < maxBytes {
                    guard let size = fromMemory ? Self.framedEntrySize(raw, at: offset) : Self.entrySize(raw, at: offset) else { break }
                    bodies.append((offset + Self.headerSize)..<(offset + size))
                    documentBytes += size - Self.headerSize - 8 - RecordID.hexCount
                    offset += size
                }
            }
            bytes.removeLast(bytes.count - offset)
            if offset == chunkStart { break }
            cursor.offset += offset - chunkStart
        }
        return (SpoolBatch(bytes: bytes, bodies: bodies), cursor)
    }

    /// Everything before `position` is delivered: forget it, deleting whole segments.
    public func acknowledge(upTo position: SpoolPosition, records: Int) {
        let doomed: [UInt64] = state.withLock { state in
            state.acked = max(state.acked, position)
            state.records = max(0, state.records - records)
            var old = state.segments.keys.filter { $0 < position.segment }
            // Everything written is delivered: start a fresh segment so this one's space is
            // freed now (a full spool must empty as soon as Elasticsearch catches up).
            if state.acked >= state.end && state.segments[state.active, default: 0] > 0 {
                old.append(state.active)
                if (try? roll(&state)) == nil { old.removeLast() }
            }
            for segment in old { state.segments[segment] = nil }
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
            // Keep the valid prefix: a crash can leave half an entry at the end.
            var bytes: [UInt8] = []
            readSegment(segment, from: 0, upTo: Int.max, into: &bytes)
            var offset = 0
            bytes.withUnsafeBytes { raw in
                while let size = Self.entrySize(raw, at: offset) {
                    if ack == nil || segment > ack!.segment || offset >= ack!.offset { state.records += 1 }
                    offset += size
                }
            }
            if offset < bytes.count { _ = truncate(path(segment), off_t(offset)) }
            state.segments[segment] = offset
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
        let temporary = directory + "/ack.tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let text = Array("\(position.segment):\(position.offset)\n".utf8)
        _ = try? writeAll(fd, text)
        _ = fdatasync(fd)
        close(fd)
        rename(temporary, directory + "/ack")
    }

    // MARK: Entries

    /// The body length in the header of the entry at `offset` (which must hold a whole header).
    static func bodyLength(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int {
        Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 4, as: UInt32.self)))
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

    /// The size of the valid entry at `offset`, or nil for a torn, corrupt or missing one.
    static func entrySize(_ bytes: UnsafeRawBufferPointer, at offset: Int) -> Int? {
        guard let size = framedEntrySize(bytes, at: offset), bytes[offset] == magic,
              size >= headerSize + 8 + RecordID.hexCount else { return nil }
        let crc = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: offset + 8, as: UInt32.self))
        guard tg_crc32c(bytes.baseAddress! + offset + headerSize, size - headerSize) == crc else { return nil }
        return size
    }
}

