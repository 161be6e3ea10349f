#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import TollgateHTTP
import TollgateIO

/// Why an HTTP exchange with Elasticsearch did not produce a response.
public enum ClientError: Error, CustomStringConvertible, Sendable {
    case resolve(String)
    case connect(String)
    case tls(String)
    case timeout
    case closed
    case badResponse(String)

    public var description: String {
        switch self {
        case .resolve(let host): return "cannot resolve \(host)"
        case .connect(let why): return "connect failed: \(why)"
        case .tls(let why): return "TLS failed: \(why)"
        case .timeout: return "timed out"
        case .closed: return "connection closed before a complete response"
        case .badResponse(let why): return "bad response: \(why)"
        }
    }
}

/// A node from `log.elasticsearch.url`.
struct Node: Sendable, CustomStringConvertible {
    let secure: Bool
    let host: String
    let port: UInt16
    let basePath: String

    init?(url: String) {
        secure = url.hasPrefix("https://")
        var rest = Substring(url.dropFirst(secure ? 8 : 7))
        var path = ""
        if let slash = rest.firstIndex(of: "/") {
            path = String(rest[slash...])
            rest = rest[..<slash]
        }
        basePath = path.hasSuffix("/") ? String(path.dropLast()) : path
        guard let (host, port) = Node.authority(rest, defaultPort: secure ? 443 : 80) else { return nil }
        self.host = host
        self.port = port
    }

    private static func authority(_ text: Substring, defaultPort: UInt16) -> (String, UInt16)? {
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            let host = String(text[text.index(after: text.startIndex)..<close])
            let after = text[text.index(after: close)...]
            return after.hasPrefix(":") ? UInt16(after.dropFirst()).map { (host, $0) } : (host, defaultPort)
        }
        if let colon = text.lastIndex(of: ":") { return UInt16(text[text.index(after: colon)...]).map { (String(text[..<colon]), $0) } }
        return text.isEmpty ? nil : (String(text), defaultPort)
    }

    var description: String { "\(secure ? "https" : "http")://\(host):\(port)\(basePath)" }
}

/// A minimal HTTP/1.1 client with keep-alive for one node at a time, used only on the shipper
/// thread (so it may wait, with poll and deadlines, but never on an event loop).
final class HTTPClient {
    private var fd: CInt = -1
    private var ssl: OpaquePointer?
    private var connectedNode: Int?
    private let tlsContext: OpaquePointer?
    private let inbound = ByteBuffer()

    init(caFile: String?) throws(ClientError) {
        var error = [CChar](repeating: 0, count: 256)
        tlsContext = tg_client_context(caFile, &error, error.count)
        if tlsContext == nil && caFile != nil {
            throw .tls(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    deinit {
        disconnect()
        if let tlsContext { SSL_CTX_free(tlsContext) }
    }

    /// Sends one request and reads the whole response (status, body), reconnecting as needed.
    func send(node: Node, index: Int, method: String, path: String, headers: [(String, String)], body: [UInt8],
              timeout: UInt64) throws(ClientError) -> (status: Int, body: [UInt8]) {
        let deadline = monotonicNanoseconds() + timeout
        if connectedNode != index { disconnect() }
        if fd < 0 { try connect(node, deadline: deadline); connectedNode = index }
        var request = Array("\(method) \(node.basePath)\(path) HTTP/1.1\r\nHost: \(node.host):\(node.port)\r\n".utf8)
        for (name, value) in headers { request += Array("\(name): \(value)\r\n".utf8) }
        request += Array("Content-Length: \(body.count)\r\n\r\n".utf8)
        request += body
        do {
            try writeAll(request, deadline: deadline)
            return try readResponse(deadline: deadline, head: method == "HEAD")
        } catch {
            disconnect()
            throw error
        }
    }

    func disconnect() {
        if let ssl { tg_ssl_free(ssl) }
        ssl = nil
        if fd >= 0 { close(fd) }
        fd = -1
        connectedNode = nil
        inbound.removeAll()
    }

    // MARK: Connecting

    private func connect(_ node: Node, deadline: UInt64) throws(ClientError) {
        guard let address = Resolver.lookup(node.host).first else { throw .resolve(node.host) }
        let target = SocketAddress(ip: address, port: node.port)
        do { fd = try Socket.connect(to: target).fd } catch { throw .connect("\(error)") }
        try wait(events: Int16(POLLOUT), deadline: deadline)
        if let error = Socket(fd: fd).pendingError() {
            disconnect()
            throw .connect("\(target): \(error)")
        }
        guard node.secure else { return }
        guard let tlsContext, let created = tg_ssl_client(tlsContext, fd, IPAddress(parsing: node.host) == nil ? node.host : nil,
                                                         node.host, IPAddress(parsing: node.host) == nil ? 0 : 1, nil) else {
            disconnect()
            throw .tls("cannot create a TLS client")
        }
        ssl = created
        while true {
            let rc = tg_ssl_handshake(created)
            if rc == 1 { return }
            if rc == TG_TLS_WANT_READ { try wait(events: Int16(POLLIN), deadline: deadline); continue }
            if rc == TG_TLS_WANT_WRITE { try wait(events: Int16(POLLOUT), deadline: deadline); continue }
            var text = [CChar](repeating: 0, count: 256)
            var alert: CInt = -1
            tg_tls_take_error(&text, text.count, &alert)
            disconnect()
            throw .tls(String(decoding: text.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
    }

    private func wait(events: Int16, deadline: UInt64) throws(ClientError) {
        while true {
            let now = monotonicNanoseconds()
            guard now < deadline else { throw .timeout }
            var pfd = pollfd(fd: fd, events: events, revents: 0)
            let rc = poll(&pfd, 1, CInt(min((deadline - now) / 1_000_000 + 1, 1000)))
            if rc > 0 { return }
            if rc < 0 && errno != EINTR { throw .connect(String(cString: strerror(errno))) }
        }
    }

    // MARK: I/O

    private func writeAll(_ bytes: [UInt8], deadline: UInt64) throws(ClientError) {
        var offset = 0
        while offset < bytes.count {
            let n: Int = bytes.withUnsafeBytes { raw in
                let start = raw.baseAddress! + offset, count = raw.count - offset
                if let ssl { return Int(tg_ssl_write(ssl, start, CInt(min(count, 1 << 20)))) }
                return tg_send(fd, start, count)
            }
            if n > 0 { offset += n; continue }
            if ssl != nil {
                if n == Int(TG_TLS_WANT_READ) { try wait(events: Int16(POLLIN), deadline: deadline); continue }
                if n == Int(TG_TLS_WANT_WRITE) { try wait(events: Int16(POLLOUT), deadline: deadline); continue }
                throw .closed
            }
            if errno == EAGAIN || errno == EINTR { try wait(events: Int16(POLLOUT), deadline: deadline); continue }
            throw .closed
        }
    }

    /// Reads more bytes into `inbound`; false at end of stream.
    private func fill(deadline: UInt64) throws(ClientError) -> Bool {
        while true {
            let n = inbound.writeWithUnsafeMutableBytes(minimumWritable: 65536) { free in
                if let ssl { return Int(tg_ssl_read(ssl, free.baseAddress, CInt(free.count))) }
                return recv(fd, free.baseAddress, free.count, 0)
            }
            if n > 0 { return true }
            if ssl != nil {
                if n == Int(TG_TLS_WANT_READ) { try wait(events: Int16(POLLIN), deadline: deadline); continue }
                if n == Int(TG_TLS_WANT_WRITE) { try wait(events: Int16(POLLOUT), deadline: deadline); continue }
                return false
            }
            if n == 0 { return false }
            if errno == EAGAIN || errno == EINTR { try wait(events: Int16(POLLIN), deadline: deadline); continue }
            return false
        }
    }

    private func readResponse(deadline: UInt64, head isHead: Bool) throws(ClientError) -> (status: Int, body: [UInt8]) {
        var scanner = HeadScanner()
        let limits = HeadLimits(requestLineBytes: 8192, headerBytes: 1 << 20, headerCount: 1000)
        var response: ResponseHead
        while true {
            let found: Int?
            do {
                found = try inbound.withReadableBytes { (bytes) throws(HTTPError) in try scanner.scan(bytes, limits: limits, isRequest: false) }
            } catch { throw .badResponse(error.reason) }
            if let length = found {
                do {
                    response = try inbound.withReadableBytes { (bytes) throws(HTTPError) in
                        try HeadParser.parseResponse(bytes, length: length, limits: limits, requestIsHead: isHead)
                    }
                } catch { throw .badResponse(error.reason) }
                inbound.consume(length)
                if response.isInformational { scanner.reset(); continue }
                break
            }
            guard try fill(deadline: deadline) else { throw .closed }
        }
        var decoder = BodyDecoder(framing: response.framing)
        var body: [UInt8] = []
        while true {
            let step: BodyStep
            do { step = try inbound.withReadableBytes { (bytes) throws(HTTPError) in try decoder.next(bytes) } } catch {
                throw .badResponse(error.reason)
            }
            switch step {
            case .data(let offset, let count, let consumed):
                body += inbound.copyBytes(offset: offset, count: count)
                inbound.consume(consumed)
            case .needMore(let consumed):
                inbound.consume(consumed)
                if try !fill(deadline: deadline) {
                    if response.framing == .untilClose { disconnect(); return (response.status, body) }
                    throw .closed
                }
            case .end(let consumed):
                inbound.consume(consumed)
                if !response.keepAlive { disconnect() }
                return (response.status, body)
            }
        }
    }
}
