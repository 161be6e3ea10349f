import TollgateIO

/// Where a request goes: a host (name or literal) and port, plus the origin-form path.
struct RequestTarget: Equatable {
    var host: String
    var port: UInt16
    var path: String

    /// The host as written in a URL or Host header: IPv6 literals in brackets.
    var bracketedHost: String { host.utf8.contains(UInt8(ascii: ":")) ? "[\(host)]" : host }

    /// `http://host[:port]/path` (absolute-form, RFC 9112 §3.2.2); only the http scheme.
    static func parseAbsolute(_ target: String) -> RequestTarget? {
        let scheme: StaticString = "http://"
        guard target.utf8.count > 7, zip(target.utf8, UnsafeBufferPointer(start: scheme.utf8Start, count: 7)).allSatisfy({ $0 | 0x20 == $1 }) else {
            return nil
        }
        let rest = target.dropFirst(7)
        let slash = rest.firstIndex(where: { $0 == "/" || $0 == "?" }) ?? rest.endIndex
        guard let (host, port) = parseAuthority(String(rest[..<slash]), defaultPort: 80) else { return nil }
        var path = String(rest[slash...])
        if path.isEmpty { path = "/" } else if path.hasPrefix("?") { path = "/" + path }
        return RequestTarget(host: host, port: port, path: path)
    }

    /// `host:port` or `[v6]:port` (CONNECT's authority-form), or a Host header value. Works on
    /// the UTF-8 bytes: every request's Host passes here, and Character-level String operations
    /// (grapheme breaking) cost more than the whole parse should.
    static func parseAuthority(_ authority: String, defaultPort: UInt16?) -> (String, UInt16)? {
        // Integer offsets into a buffer: Substring.UTF8View indexing cost more than the parse.
        var authority = authority
        return authority.withUTF8 { bytes -> (String, UInt16)? in
            guard !bytes.isEmpty, !bytes.contains(UInt8(ascii: "@")) else { return nil }
            var start = 0, end = bytes.count
            var port = defaultPort
            if bytes[0] == UInt8(ascii: "[") {
                guard let close = bytes.firstIndex(of: UInt8(ascii: "]")) else { return nil }
                if close + 1 < end {
                    guard bytes[close + 1] == UInt8(ascii: ":") else { return nil }
                    port = decimalPort(UnsafeBufferPointer(rebasing: bytes[(close + 2)...]))
                }
                start = 1
                end = close
            } else if let colon = bytes.lastIndex(of: UInt8(ascii: ":")) {
                port = decimalPort(UnsafeBufferPointer(rebasing: bytes[(colon + 1)...]))
                end = colon
            }
            guard let port, port > 0, start < end else { return nil }
            let host = UnsafeBufferPointer(rebasing: bytes[start..<end])
            var hasUpper = false
            for b in host {
                hasUpper = hasUpper || (b >= 0x41 && b <= 0x5A)
                let valid = (b >= 0x30 && b <= 0x39) || (b | 0x20 >= 0x61 && b | 0x20 <= 0x7A) || b == 0x2D || b == 0x2E || b == 0x3A || b == 0x5F
                guard valid else { return nil }
            }
            let text = String(decoding: host, as: UTF8.self)
            return (hasUpper ? text.lowercased() : text, port)
        }
    }

    /// 1 to 5 decimal digits up to 65535, nothing else.
    private static func decimalPort(_ digits: UnsafeBufferPointer<UInt8>) -> UInt16? {
        guard !digits.isEmpty, digits.count <= 5 else { return nil }
        var value = 0
        for d in digits {
            guard d >= 0x30 && d <= 0x39 else { return nil }
            value = value * 10 + Int(d - 0x30)
        }
        return value <= 65535 ? UInt16(value) : nil
    }
}

/// What the first bytes of a redirected connection look like.
enum SniffedProtocol: Equatable {
    case tls, http, other
    /// Not enough bytes yet to tell.
    case undecided

    /// A TLS handshake record starts 0x16 0x03; an HTTP request starts with an upper-case method and a space.
    static func classify(_ bytes: UnsafeRawBufferPointer) -> SniffedProtocol {
        guard let first = bytes.first else { return .undecided }
        if first == 0x16 { return .tls }
        for (index, byte) in bytes.enumerated() {
            if byte == 0x20 { return index > 0 ? .http : .other }
            if !(byte >= 0x41 && byte <= 0x5A) || index >= 16 { return .other }
        }
        return .undecided
    }
}
