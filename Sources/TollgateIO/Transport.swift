/// Why a connection failed: a socket error, or a TLS failure with its alert.
public enum ConnectionError: Error, Equatable, Sendable, CustomStringConvertible {
    case system(Errno)
    /// `alertReceived` is the TLS alert the peer sent, when that was the cause (48 = unknown_ca).
    case tls(message: String, alertReceived: Int?)
    /// The peer hung up in the middle of the TLS handshake (how many clients refuse a certificate).
    case closedDuringHandshake

    public var description: String {
        switch self {
        case .system(let errno): return errno.description
        case .tls(let message, let alert): return alert.map { "\(message) (alert \($0))" } ?? message
        case .closedDuringHandshake: return "peer closed the connection during the TLS handshake"
        }
    }
}

/// The outcome of one transport operation.
public enum TransportStatus: Equatable {
    /// Bytes moved (or, for `handshake`, the handshake finished).
    case done(Int)
    case wantRead
    case wantWrite
    /// The peer ended the stream.
    case closed
    case failed(ConnectionError)
}

/// Something between a Connection's plaintext queues and its socket — TLS. Plain TCP needs none.
public protocol Transport: AnyObject {
    func handshake() -> TransportStatus
    func read(into buffer: ByteBuffer, max: Int) -> TransportStatus
    func write(from buffer: ByteBuffer) -> TransportStatus
    /// True when the transport holds input taken from the socket but not yet returned by `read`:
    /// epoll cannot report it, so the connection keeps reading while this holds.
    var hasBufferedInput: Bool { get }
    /// Says goodbye at this layer (close_notify) before the socket's FIN.
    func shutdown()
    /// Releases the transport's resources; the socket is closed by the Connection afterwards.
    func close()
}

extension ByteBuffer {
    /// Lets a transport fill free space directly: `body` returns how many bytes it wrote (or <= 0).
    public func writeWithUnsafeMutableBytes(minimumWritable: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        reserveWritable(minimumWritable)
        return appendInPlace(minimumWritable, body)
    }
}
