#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateIO

/// Appends encoded flow records to `log.file` on its own thread. Event loops hand over bytes
/// through a bounded queue and never wait: records that do not fit when the queue is full are
/// counted as dropped. The file is rotated at midnight UTC (`flows-YYYY-MM-DD.ndjson.gz`), and rotated
/// files older than the retention are deleted — the stack design's daily/30-day retention.
public final class FlowLog: Sendable {
    private struct State {
        var pending: [UInt8] = []
        var dropped = 0
        var written = 0
        var queuedRecords = 0
    }

    private let state = Mutex(State())
    private let path: String?
    private let retentionDays: Int
    private let capacityBytes: Int
    private let stopped = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    /// `path` nil disables the file sink (records then go only to Elasticsearch).
    public init(path: String?, retentionDays: Int = 30, capacityBytes: Int = 32 << 20) {
        self.path = path
        self.retentionDays = retentionDays
        self.capacityBytes = capacityBytes
    }

    public var isEnabled: Bool { path != nil }

    public func start() {
        startThread(name: "tollgate-flowlog", background: true) { [self] in runWriter() }
    }

    /// Hands encoded records (`records` JSON lines) over; never blocks beyond a short critical
    /// section.
    public func submit(_ lines: UnsafeRawBufferPointer, records: Int) {
        state.withLock { state in
            if state.pending.count + lines.count > capacityBytes {
                state.dropped += records
            } else {
                state.pending.append(contentsOf: lines)
                state.queuedRecords += records
            }
        }
    }

    /// Records written to the file and records lost so far.
    public var statistics: (written: Int, dropped: Int) { state.withLock { ($0.written, $0.dropped) } }

    /// Flushes what is queued and stops the writer; returns once it is on disk.
    public func stop() {
        stopped.store(true, ordering: .releasing)
        while !finished.load(ordering: .acquiring) { usleep(5_000) }
    }

    private func runWriter() {
        guard let path else {
            finished.store(true, ordering: .releasing)
            return
        }
        var file = LogFile(path: path, retentionDays: retentionDays)
        var swapped: [UInt8] = []
        var reportedError = false
        while true {
            let stopping = stopped.load(ordering: .acquiring)
            let records = state.withLock { state in
                swap(&state.pending, &swapped)
                defer { state.queuedRecords = 0 }
                return state.queuedRecords
            }
            file.rotateIfDayChanged()
            if !swapped.isEmpty {
                do {
                    try file.append(swapped)
                    reportedError = false
                    state.withLock { $0.written += records }
                } catch {
                    state.withLock { $0.dropped += records }
                    if !reportedError {
                        reportedError = true
                        Log.error("flow log \(path): write failed (\(error)); records are being lost")
                    }
                }
            }
            swapped.removeAll(keepingCapacity: true)
            if stopping { break }
            usleep(50_000)
        }
        file.close()
        finished.store(true, ordering: .releasing)
    }
}

/// The flow-log file and its daily rotation (writer thread only).
private struct LogFile {
    let path: String
    let retentionDays: Int
    private var fd: CInt = -1
    private var day: Int

    init(path: String, retentionDays: Int) {
        self.path = path
        self.retentionDays = retentionDays
        day = Self.today()
        ensureParentDirectory(of: path)
        // A file left by a run on an earlier day is rotated before anything new goes in.
        var info = stat()
        if stat(path, &info) == 0, Int(info.st_mtim.tv_sec / 86_400) < day {
            rotate(fileDay: Int(info.st_mtim.tv_sec / 86_400))
        }
    }

    static func today() -> Int { Int(wallClockMilliseconds() / 86_400_000) }

    mutating func append(_ bytes: [UInt8]) throws(SystemError) {
        if fd < 0 {
            fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
            guard fd >= 0 else { throw SystemError(call: "open", errno: Errno(rawValue: errno)) }
        }
        try writeAll(fd, bytes)
    }

    mutating func rotateIfDayChanged() {
        let now = Self.today()
        guard now != day else { return }
        rotate(fileDay: day)
        day = now
    }

    mutating func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// flows.ndjson -> flows-YYYY-MM-DD.ndjson.gz, then old rotations are deleted.
    private mutating func rotate(fileDay: Int) {
        close()
        let rotated = rotatedName(fileDay)
        guard rename(path, rotated) == 0 else { return }
        if tg_gzip_file(rotated, rotated + ".gz") == 0 {
            unlink(rotated)
        } else {
            Log.warning("flow log: could not compress \(rotated); kept uncompressed")
        }
        deleteExpired(before: fileDay - retentionDays + 1)
    }

    private func rotatedName(_ day: Int) -> String {
        let (year, month, dayOfMonth) = civilDate(daysSinceEpoch: day)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        let stem = path.hasSuffix(".ndjson") ? String(path.dropLast(7)) : path
        return "\(stem)-\(year)-\(two(month))-\(two(dayOfMonth)).ndjson"
    }

    private func deleteExpired(before oldestKept: Int) {
        let slash = path.lastIndex(of: "/")
        let directory = slash.map { String(path[..<$0]) } ?? "."
        guard let dir = opendir(directory.isEmpty ? "/" : directory) else { return }
        defer { closedir(dir) }
        let stem = String((path.hasSuffix(".ndjson") ? String(path.dropLast(7)) : path).split(separator: "/").last ?? "")
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            guard name.hasPrefix(stem + "-"), name.hasSuffix(".ndjson.gz") || name.hasSuffix(".ndjson") else { continue }
            let date = name.dropFirst(stem.count + 1).prefix(10).split(separator: "-").compactMap { Int($0) }
            guard date.count == 3, daysSinceEpoch(year: date[0], month: date[1], day: date[2]) < oldestKept else { continue }
            unlink(directory + "/" + name)
        }
    }
}

/// Creates the directory holding `path` (one level) when it is missing.
func ensureParentDirectory(of path: String) {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
    _ = mkdir(String(path[..<slash]), 0o750)
}
