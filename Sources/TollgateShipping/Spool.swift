// TollgateShipping: flow records to Elasticsearch — a disk spool that survives crashes, a
// shipper that batches, compresses and retries off the event loops, and the index setup.
#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateIO

/// One flow record as the shipper handles it: when it happened (for the daily index), its
/// `_id`, and the ECS document.
public struct SpooledRecord: Sendable {
    public let timestampMilliseconds: Int64
    /// 32 lower-case hex characters.
    public let id: [UInt8]
    public let document: [UInt8]

    public init(timestampMilliseconds: Int64, id: [UInt8], document: [UInt8]) {
        self.timestampMilliseconds = timestampMilliseconds
        self.id = id
        self.document = document
    }

    var encodedSize: Int { Spool.headerSize + 8 + 32 + document.count }
}

/// A place in the spool: a segment number and a byte offset in it.
public struct SpoolPosition: Comparable, Sendable, CustomStringConvertible {
    public var segment: UInt64
    public var offset: Int
    public static func < (a: SpoolPosition, b: SpoolPosition) -> Bool { (a.segment, a.offset) < (b.segment, b.offset) }
    public var description: String { "\(segment):\(offset)" }
}

/// A segmented append-only log of records on disk. Each entry carries its length and a CRC-32,
/// so a torn tail after a crash is detected and cut off; a segment is deleted only once every
/// record in it was acknowledged. The acknowledged position is kept in `ack` (write + rename).
/// Thread-safe: one writer thread appends, one sender thread reads and acknowledges.
public final class Spool: Sendable {
    static let headerSize = 12
    private static let magic: UInt8 = 0xA5
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
    public var acknowledgedPosition: SpoolPosition { state.withLock { $0.acked } }

    /// Appends records (one write per call); the caller enforces the size limit.
    public func append(_ records: [SpooledRecord]) throws(SystemError) {
        guard !records.isEmpty else { return }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(records.reduce(0) { $0 + $1.encodedSize })
        for record in records { Self.encode(record, into: &bytes) }
        try state.withLock { (state) throws(SystemError) in
            if state.activeFD < 0 || state.segments[state.active, default: 0] >= Self.segmentBytes {
                try roll(&state)
            }
            try writeAll(state.activeFD, bytes)
            state.segments[state.active, default: 0] += bytes.count
            state.end = SpoolPosition(segment: state.active, offset: state.segments[state.active]!)
            state.records += records.count
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

    /// Reads records from `position` up to the end written so far, at most `maxRecords` / `maxBytes`.
    public func read(from position: SpoolPosition, maxRecords: Int, maxBytes: Int) -> (records: [SpooledRecord], next: SpoolPosition) {
        var records: [SpooledRecord] = []
        var cursor = position
        var bytes = 0
        while records.count < maxRecords && bytes < maxBytes {
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
            let chunk = readSegment(cursor.segment, from: cursor.offset, upTo: min(end, cursor.offset + max(maxBytes - bytes, 1 << 16)))
            var offset = 0
            while offset < chunk.count && records.count < maxRecords && bytes < maxBytes {
                guard let (record, size) = Self.decode(chunk, at: offset) else { break }
                records.append(record)
                offset += size
                bytes += record.document.count
            }
            if offset == 0 { break }
            cursor.offset += offset
        }
        return (records, cursor)
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
            let bytes = readSegment(segment, from: 0, upTo: Int.max)
            var offset = 0
            while let (_, size) = Self.decode(bytes, at: offset) {
                if ack == nil || segment > ack!.segment || offset >= ack!.offset { state.records += 1 }
                offset += size
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

    private func readSegment(_ segment: UInt64, from offset: Int, upTo end: Int) -> [UInt8] {
        let fd = open(path(segment), O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return [] }
        defer { close(fd) }
        var size = stat()
        guard fstat(fd, &size) == 0 else { return [] }
        let length = min(Int(size.st_size), end) - offset
        guard length > 0 else { return [] }
        var bytes = [UInt8](repeating: 0, count: length)
        let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
        return n > 0 ? Array(bytes[0..<n]) : []
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

    static func encode(_ record: SpooledRecord, into bytes: inout [UInt8]) {
        var body: [UInt8] = []
        body.reserveCapacity(40 + record.document.count)
        withUnsafeBytes(of: record.timestampMilliseconds.littleEndian) { body.append(contentsOf: $0) }
        body.append(contentsOf: record.id.prefix(32))
        body.append(contentsOf: [UInt8](repeating: UInt8(ascii: "0"), count: max(0, 32 - record.id.count)))
        body.append(contentsOf: record.document)
        let crc = body.withUnsafeBytes { tg_crc32($0.baseAddress, $0.count) }
        bytes.append(magic)
        bytes.append(contentsOf: [0, 0, 0])
        withUnsafeBytes(of: UInt32(body.count).littleEndian) { bytes.append(contentsOf: $0) }
        withUnsafeBytes(of: crc.littleEndian) { bytes.append(contentsOf: $0) }
        bytes.append(contentsOf: body)
    }

    static func decode(_ bytes: [UInt8], at offset: Int) -> (SpooledRecord, Int)? {
        guard bytes.count - offset >= headerSize + 40, bytes[offset] == magic else { return nil }
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        let length = Int(u32(offset + 4))
        let start = offset + headerSize
        guard length >= 40, bytes.count - start >= length else { return nil }
        let crc = bytes[start..<(start + length)].withUnsafeBytes { tg_crc32($0.baseAddress, $0.count) }
        guard crc == u32(offset + 8) else { return nil }
        var timestamp: Int64 = 0
        for k in 0..<8 { timestamp |= Int64(bytes[start + k]) << (8 * Int64(k)) }
        let id = Array(bytes[(start + 8)..<(start + 40)])
        let document = Array(bytes[(start + 40)..<(start + length)])
        return (SpooledRecord(timestampMilliseconds: timestamp, id: id, document: document), headerSize + length)
    }
}

func writeAll(_ fd: CInt, _ bytes: [UInt8]) throws(SystemError) {
    var offset = 0
    while offset < bytes.count {
        let n = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + offset, $0.count - offset) }
        if n < 0 {
            if errno == EINTR { continue }
            throw SystemError(call: "write", errno: Errno(rawValue: errno))
        }
        offset += n
    }
}
