#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// Starts a detached OS thread running `body`; the closure travels through `Unmanaged`
/// because pthread_create takes a C function pointer.
public func startThread(name: String, _ body: @escaping @Sendable () -> Void) {
    final class Box: @unchecked Sendable {  // handed to exactly one new thread, then released there
        let body: @Sendable () -> Void
        let name: String
        init(_ body: @escaping @Sendable () -> Void, _ name: String) { self.body = body; self.name = name }
    }
    let box = Unmanaged.passRetained(Box(body, name)).toOpaque()
    var thread = pthread_t()
    let rc = pthread_create(&thread, nil, { raw in
        let box = Unmanaged<Box>.fromOpaque(raw!).takeRetainedValue()
        tg_set_thread_name(String(box.name.prefix(15)))
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
