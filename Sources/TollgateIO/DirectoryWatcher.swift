#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// Calls `onChange` on its own thread when files in a directory change (inotify) or when asked
/// (`trigger`, e.g. from SIGHUP). Bursts are debounced, so an editor's write-rename-chmod save
/// becomes one call.
public final class DirectoryWatcher: Sendable {
    private let requests: CInt

    public init() {
        requests = tg_eventfd()
    }

    /// Asks for a call as if the directory had changed; callable from any thread.
    public func trigger() {
        var one: UInt64 = 1
        _ = write(requests, &one, 8)
    }

    public func start(directory: String, onChange: @escaping @Sendable () -> Void) {
        let inotify = inotify_init1(CInt(IN_CLOEXEC))
        let mask = UInt32(IN_CLOSE_WRITE | IN_MOVED_TO | IN_MOVED_FROM | IN_DELETE | IN_CREATE | IN_MODIFY)
        if inotify < 0 || inotify_add_watch(inotify, directory, mask) < 0 {
            Log.warning("cannot watch \(directory) for changes (\(String(cString: strerror(errno)))); use SIGHUP or the admin API")
        }
        let requests = self.requests
        startThread(name: "tollgate-watch") {
            var fds = [pollfd(fd: inotify, events: Int16(POLLIN), revents: 0), pollfd(fd: requests, events: Int16(POLLIN), revents: 0)]
            var buffer = [UInt8](repeating: 0, count: 64 * 1024)
            while true {
                guard poll(&fds, 2, -1) > 0 else { continue }
                usleep(150_000)
                for fd in [inotify, requests] where fd >= 0 {
                    var ready = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
                    while poll(&ready, 1, 0) > 0 {
                        if buffer.withUnsafeMutableBytes({ read(fd, $0.baseAddress, $0.count) }) <= 0 { break }
                    }
                }
                onChange()
            }
        }
    }
}
