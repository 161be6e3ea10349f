#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// The outcome of one non-blocking read or write.
public enum IOResult: Equatable {
    case bytes(Int)
    case wouldBlock
    case endOfStream
    case failed(Errno)
}

/// A non-blocking TCP socket file descriptor; each method says which syscall it wraps.
public struct Socket: Hashable, Sendable {
    public let fd: CInt

    public init(fd: CInt) { self.fd = fd }

    /// socket + SO_REUSEADDR (+ SO_REUSEPORT) + bind + listen: one listener per loop shares the port.
    public static func listen(on address: SocketAddress, reusePort: Bool, backlog: CInt = 4096) throws(SystemError) -> Socket {
        let fd = try syscall("socket") { tg_socket(address.family, TG_SOCK_STREAM) }
        let socket = Socket(fd: fd)
        do {
            _ = try syscall("setsockopt(SO_REUSEADDR)") { tg_setsockopt_int(fd, TG_SOL_SOCKET, TG_SO_REUSEADDR, 1) }
            if reusePort {
                _ = try syscall("setsockopt(SO_REUSEPORT)") { tg_setsockopt_int(fd, TG_SOL_SOCKET, TG_SO_REUSEPORT, 1) }
            }
            if !address.ip.isV4 {
                _ = try syscall("setsockopt(IPV6_V6ONLY)") { tg_setsockopt_int(fd, TG_IPPROTO_IPV6, TG_IPV6_V6ONLY, 1) }
            }
            _ = try syscall("bind(\(address))") { address.withSockAddr { bind(fd, $0, $1) } }
            _ = try syscall("listen") { Glibc.listen(fd, backlog) }
        } catch {
            socket.close()
            throw error
        }
        return socket
    }

    /// accept4: nil when no connection is pending.
    public func accept() throws(SystemError) -> (Socket, SocketAddress)? {
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        while true {
            let fd = tg_accept(self.fd, &storage, &length)
            if fd >= 0 {
                let peer = SocketAddress(storage: storage) ?? SocketAddress(ip: .unspecifiedV4, port: 0)
                let socket = Socket(fd: fd)
                socket.setNoDelay()
                return (socket, peer)
            }
            let err = Errno(rawValue: Glibc.errno)
            switch err {
            case .interrupted, .connectionAborted: continue
            case .wouldBlock: return nil
            default: throw SystemError(call: "accept4", errno: err)
            }
        }
    }

    /// socket + non-blocking connect; completion is reported by writability and `pendingError()`.
    public static func connect(to address: SocketAddress) throws(SystemError) -> Socket {
        let fd = try syscall("socket") { tg_socket(address.family, TG_SOCK_STREAM) }
        let socket = Socket(fd: fd)
        socket.setNoDelay()
        let rc = address.withSockAddr { Glibc.connect(fd, $0, $1) }
        if rc < 0 {
            let err = Errno(rawValue: Glibc.errno)
            if err != .inProgress && err != .interrupted {
                socket.close()
                throw SystemError(call: "connect(\(address))", errno: err)
            }
        }
        return socket
    }

    /// getsockopt(SO_ERROR): the result of a non-blocking connect.
    public func pendingError() -> Errno? {
        var value: CInt = 0
        if tg_getsockopt_int(fd, TG_SOL_SOCKET, TG_SO_ERROR, &value) < 0 { return Errno(rawValue: Glibc.errno) }
        return value == 0 ? nil : Errno(rawValue: value)
    }

    /// read(2) into the buffer.
    public func read(into buffer: ByteBuffer, max: Int) -> IOResult {
        while true {
            let n = buffer.readFrom(fd: fd, max: max)
            if n > 0 { return .bytes(n) }
            if n == 0 { return .endOfStream }
            let err = Errno(rawValue: Glibc.errno)
            if err == .interrupted { continue }
            return err == .wouldBlock ? .wouldBlock : .failed(err)
        }
    }

    /// send(2, MSG_NOSIGNAL) of the buffer's readable bytes, consuming what was sent.
    public func write(from buffer: ByteBuffer) -> IOResult {
        while true {
            let n = buffer.writeTo(fd: fd)
            if n >= 0 { return .bytes(n) }
            let err = Errno(rawValue: Glibc.errno)
            if err == .interrupted { continue }
            return err == .wouldBlock ? .wouldBlock : .failed(err)
        }
    }

    /// recv(MSG_PEEK) of up to `count` bytes without consuming them.
    public func peek(count: Int) -> [UInt8]? {
        var bytes = [UInt8](repeating: 0, count: count)
        let n = bytes.withUnsafeMutableBytes { recv(fd, $0.baseAddress, count, TG_MSG_PEEK) }
        return n > 0 ? Array(bytes[0..<n]) : nil
    }

    /// getsockopt(SO_ORIGINAL_DST / IP6T_SO_ORIGINAL_DST): where a REDIRECTed connection was headed.
    public func originalDestination() -> SocketAddress? {
        guard let local = localAddress() else { return nil }
        var storage = sockaddr_storage()
        var length = socklen_t(0)
        guard tg_original_dst(fd, local.family, &storage, &length) == 0 else { return nil }
        return SocketAddress(storage: storage)
    }

    /// getsockname(2).
    public func localAddress() -> SocketAddress? {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return rc == 0 ? SocketAddress(storage: storage) : nil
    }

    /// shutdown(SHUT_WR): sends FIN after the buffered bytes, keeps reading.
    public func shutdownWrite() { _ = shutdown(fd, CInt(SHUT_WR)) }

    /// close(2); never retried on EINTR (the descriptor is gone either way on Linux).
    public func close() { _ = Glibc.close(fd) }

    func setNoDelay() { _ = tg_setsockopt_int(fd, TG_IPPROTO_TCP, TG_TCP_NODELAY, 1) }
}

/// Every address configured on this host's interfaces (Tollgate's own addresses, for loop checks).
public func localInterfaceAddresses() -> [IPAddress] {
    var list: UnsafeMutablePointer<ifaddrs>?
    guard getifaddrs(&list) == 0 else { return [] }
    defer { freeifaddrs(list) }
    var result: [IPAddress] = []
    var cursor = list
    while let entry = cursor {
        if let address = entry.pointee.ifa_addr {
            var storage = sockaddr_storage()
            let length = CInt(address.pointee.sa_family) == AF_INET6 ? MemoryLayout<sockaddr_in6>.size : MemoryLayout<sockaddr_in>.size
            if CInt(address.pointee.sa_family) == AF_INET || CInt(address.pointee.sa_family) == AF_INET6 {
                withUnsafeMutableBytes(of: &storage) { $0.copyMemory(from: UnsafeRawBufferPointer(start: address, count: length)) }
                if let parsed = SocketAddress(storage: storage) { result.append(parsed.ip) }
            }
        }
        cursor = entry.pointee.ifa_next
    }
    return result
}
