import CTollgateShim
import TollgateIO

/// TLS over a Connection's socket through OpenSSL (our fd BIO): plaintext in the Connection's
/// queues, records on the wire. Confined to the owning connection's loop.
public final class TLSTransport: Transport {
    private var ssl: OpaquePointer?
    /// Why the peer's certificate was refused (client side), captured before the SSL is freed.
    public private(set) var verificationFailure: CertificateFailure?
    /// Filled when the handshake completes.
    public private(set) var version: String?
    public private(set) var cipher: String?
    private let isClient: Bool

    init(ssl: OpaquePointer, isClient: Bool) {
        self.ssl = ssl
        self.isClient = isClient
    }

    deinit { close() }

    public func handshake() -> TransportStatus {
        guard let ssl else { return .failed(.system(.brokenPipe)) }
        let rc = tg_ssl_handshake(ssl)
        if rc == 1 {
            version = ecsVersion(String(cString: SSL_get_version(ssl)))
            cipher = tg_ssl_cipher_name(ssl).map { String(cString: $0) }
            return .done(0)
        }
        let status = map(rc)
        if case .failed = status, isClient { captureVerification() }
        if case .closed = status { return .failed(.closedDuringHandshake) }
        return status
    }

    public func read(into buffer: ByteBuffer, max: Int) -> TransportStatus {
        guard let ssl else { return .closed }
        var rc: CInt = 0
        _ = buffer.writeWithUnsafeMutableBytes(minimumWritable: max) { free in
            rc = tg_ssl_read(ssl, free.baseAddress, CInt(Swift.min(free.count, max)))
            return Int(rc)
        }
        return rc > 0 ? .done(Int(rc)) : map(rc)
    }

    public var hasBufferedInput: Bool { ssl.map { tg_ssl_has_pending($0) == 1 } ?? false }

    public func write(from buffer: ByteBuffer) -> TransportStatus {
        guard let ssl else { return .failed(.system(.brokenPipe)) }
        let rc = buffer.withReadableBytes { bytes in
            tg_ssl_write(ssl, bytes.baseAddress, CInt(Swift.min(bytes.count, 1 << 20)))
        }
        if rc > 0 {
            buffer.consume(Int(rc))
            return .done(Int(rc))
        }
        return map(rc)
    }

    public func shutdown() {
        if let ssl { tg_ssl_shutdown(ssl) }
    }

    public func close() {
        if let ssl { tg_ssl_free(ssl) }
        ssl = nil
    }

    /// The session to offer on the next connection to the same origin (caller frees).
    func copySession() -> OpaquePointer? {
        ssl.flatMap { SSL_get1_session($0) }
    }

    private func map(_ rc: CInt) -> TransportStatus {
        switch rc {
        case Int32(TG_TLS_WANT_READ): return .wantRead
        case Int32(TG_TLS_WANT_WRITE): return .wantWrite
        case Int32(TG_TLS_CLOSED), Int32(TG_TLS_SYSCALL_EOF): return .closed
        default:
            var text = [CChar](repeating: 0, count: 256)
            var alert: CInt = -1
            tg_tls_take_error(&text, text.count, &alert)
            let message = String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            return .failed(.tls(message: message, alertReceived: alert >= 0 ? Int(alert) : nil))
        }
    }

    private func captureVerification() {
        guard let ssl else { return }
        var text: UnsafePointer<CChar>?
        let code = tg_ssl_verify_result(ssl, &text)
        if code != 0 { verificationFailure = CertificateFailure(code: Int(code), text: text.map { String(cString: $0) } ?? "") }
    }

    private func ecsVersion(_ openssl: String) -> String {
        switch openssl {
        case "TLSv1.3": return "1.3"
        case "TLSv1.2": return "1.2"
        default: return openssl
        }
    }
}

/// An upstream certificate OpenSSL refused, with a short reason an agent can act on.
public struct CertificateFailure: Sendable, Equatable {
    public let code: Int
    public let text: String

    /// `expired`, `not_yet_valid`, `unknown_issuer`, `self_signed`, `name_mismatch`, or `invalid`.
    public var reason: String {
        switch code {
        case 10: return "expired"
        case 9: return "not_yet_valid"
        case 2, 20, 21: return "unknown_issuer"
        case 18, 19: return "self_signed"
        case 62, 64: return "name_mismatch"
        default: return "invalid"
        }
    }
}
