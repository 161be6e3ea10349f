// TollgateIO: the event loop, sockets, timers and the resolver pool — everything that talks to the kernel.
#if canImport(Glibc)
import Glibc
#endif

/// An errno value with the names the loop cares about.
public struct Errno: RawRepresentable, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: CInt
    public init(rawValue: CInt) { self.rawValue = rawValue }

    public static let wouldBlock = Errno(rawValue: EAGAIN)
    public static let interrupted = Errno(rawValue: EINTR)
    public static let inProgress = Errno(rawValue: EINPROGRESS)
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    public static let brokenPipe = Errno(rawValue: EPIPE)
    public static let timedOut = Errno(rawValue: ETIMEDOUT)
    public static let hostUnreachable = Errno(rawValue: EHOSTUNREACH)
    public static let networkUnreachable = Errno(rawValue: ENETUNREACH)
    public static let tooManyFiles = Errno(rawValue: EMFILE)
    public static let tooManyFilesSystem = Errno(rawValue: ENFILE)
    public static let connectionAborted = Errno(rawValue: ECONNABORTED)

    public var description: String { String(cString: strerror(rawValue)) }
}

/// A failed system call: which call, and the errno it returned.
public struct SystemError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Errno
    public init(call: String, errno: Errno) {
        self.call = call
        self.errno = errno
    }
    public var description: String { "\(call): \(errno)" }
}

/// Runs a syscall returning a C integer, retrying EINTR; errno is read before any other Swift code runs.
@inline(__always)
func syscall<T: BinaryInteger>(_ call: String = #function, _ body: () -> T) throws(SystemError) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let err = Errno(rawValue: Glibc.errno)
        if err == .interrupted { continue }
        throw SystemError(call: call, errno: err)
    }
}

/// Writes all of `bytes` to `fd`, resuming after short writes (files: the spool, the flow log,
/// dead letters).
public func writeAll(_ fd: CInt, _ bytes: UnsafeRawBufferPointer) throws(SystemError) {
    var offset = 0
    while offset < bytes.count {
        offset += try syscall("write") { Glibc.write(fd, bytes.baseAddress! + offset, bytes.count - offset) }
    }
}

/// Writes all of `bytes` to `fd`, resuming after short writes.
public func writeAll(_ fd: CInt, _ bytes: [UInt8]) throws(SystemError) {
    // withUnsafeBytes rethrows untyped errors: the typed one travels out in a Result.
    try bytes.withUnsafeBytes { raw in Result { () throws(SystemError) in try writeAll(fd, raw) } }.get()
}
