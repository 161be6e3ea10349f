#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// Starts a detached OS thread running `body`; the closure travels through `Unmanaged`
/// because pthread_create takes a C function pointer. A `background` thread (record writers
/// and shippers) gives way to the event loops when they compete for a CPU: it catches up in
/// their idle time instead of delaying traffic, and its queue or spool holds the backlog.
public func startThread(name: String, background: Bool = false, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {  // handed to exactly one new thread, then released there
        let body: @Sendable () -> Void
        let name: String
        let background: Bool
        init(_ body: @escaping @Sendable () -> Void, _ name: String, _ background: Bool) {
            self.body = body; self.name = name; self.background = background
        }
    }
    let box = Unmanaged.passRetained(Box(body, name, background)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        tg_set_thread_name(String(box.name.prefix(15)))
        if box.background && tg_set_thread_background() != 0 {
            Log.warning("\(box.name): could not lower the thread's scheduling priority: \(Errno(rawValue: errno))")
        }
        box.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    pthread_detach(thread)
}

/// The number of CPUs this process may run on (for `workers: auto`).
public func availableCPUCount() -> Int {
    Int(sysconf(Int32(_SC_NPROCESSORS_ONLN)))
}
