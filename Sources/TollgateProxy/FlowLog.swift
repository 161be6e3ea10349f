#if canImport(Glibc)
import Glibc
#endif
import Synchronization
import TollgateIO

/// Appends encoded flow records to `log.file` on its own thread. Event loops hand over bytes
/// through a bounded queue and never wait: when the queue is full the record is counted as
/// dropped (the Elasticsearch issue replaces this with a disk spool).
public final class FlowLog: Sendable {
    private struct State {
        var pending: [UInt8] = []
        var dropped = 0
        var written = 0
        var queuedRecords = 0
    }

    private let state = Mutex(State())
    private let path: String?
    private let capacityBytes: Int
    private let stopped = Atomic<Bool>(false)
    private let finished = Atomic<Bool>(false)

    /// `path` nil keeps records in memory only (counted, then discarded).
    public init(path: String?, capacityBytes: Int = 32 << 20) {
        self.path = path
        self.capacityBytes = capacityBytes
    }

    public func start() {
        startThread(name: "tollgate-flowlog") { [self] in runWriter() }
    }

    /// Hands one encoded record (a JSON line) over; never blocks beyond a short critical section.
    public func submit(_ line: [UInt8]) {
        state.withLock { state in
            if state.pending.count + line.count > capacityBytes {
                state.dropped += 1
            } else {
                state.pending.append(contentsOf: line)
                state.queuedRecords += 1
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
        var fd: CInt = -1
        var reportedError = false
        var swapped: [UInt8] = []
        while true {
            let stopping = stopped.load(ordering: .acquiring)
            let records = state.withLock { state in
                swap(&state.pending, &swapped)
                defer { state.queuedRecords = 0 }
                return state.queuedRecords
            }
            if !swapped.isEmpty && path == nil { state.withLock { $0.written += records } }
            if !swapped.isEmpty, let path {
                if fd < 0 {
                    ensureParentDirectory(of: path)
                    fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o640)
                }
                if fd >= 0, writeAll(fd, swapped) {
                    reportedError = false
                    state.withLock { $0.written += records }
                } else if !reportedError {
                    reportedError = true
                    let reason = String(cString: strerror(errno))
                    Log.error("flow log \(path): write failed (\(reason)); records are being lost")
                    state.withLock { $0.dropped += records }
                }
            }
            swapped.removeAll(keepingCapacity: true)
            if stopping { break }
            usleep(50_000)
        }
        if fd >= 0 { close(fd) }
        finished.store(true, ordering: .releasing)
    }

    private func writeAll(_ fd: CInt, _ bytes: [UInt8]) -> Bool {
        var offset = 0
        return bytes.withUnsafeBytes { raw in
            while offset < raw.count {
                let n = write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 { if errno == EINTR { continue }; return false }
                offset += n
            }
            return true
        }
    }
}

/// Creates the directory holding `path` (one level) when it is missing.
func ensureParentDirectory(of path: String) {
    guard let slash = path.lastIndex(of: "/"), slash != path.startIndex else { return }
    _ = mkdir(String(path[..<slash]), 0o750)
}
