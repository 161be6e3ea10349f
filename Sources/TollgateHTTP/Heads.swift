#if canImport(Glibc)
import Glibc
#endif
/// How a message body is delimited on the wire.
public enum BodyFraming: Equatable, Sendable {
    case none
    case length(Int)
    case chunked
    /// Response bodies only: the body ends when the server closes.
    case untilClose
}

/// A parsed, validated request head.
public struct RequestHead: Sendable {
    public let method: String
    public let target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public let minorVersion: Int
    public let headers: Headers
    public let framing: BodyFraming
    /// Whether the client asked to keep the connection open after this exchange.
    public let keepAlive: Bool
    public let expectsContinue: Bool
    /// The Upgrade header's value when the client asked to switch protocols (`Connection: upgrade`).
    public let upgrade: String?
    /// Bytes of the head on the wire, including the final CRLF CRLF.
    public let headLength: Int

    public var isConnect: Bool { method == "CONNECT" }
    public var isHead: Bool { method == "HEAD" }
}

/// A parsed, validated response head.
public struct ResponseHead: Sendable {
    public let status: Int
    public let reason: String
    public let minorVersion: Int
    public let headers: Headers
    public let framing: BodyFraming
    public let keepAlive: Bool
    public let headLength: Int

    public var isInformational: Bool { status >= 100 && status < 200 }
}

/// Finds the end of a head incrementally, so a head arriving in many segments is scanned once.
public struct HeadScanner: Sendable {
    private var scanned = 0
    private var lineStart = 0

    public init() {}

    public mutating func reset() { scanned = 0; lineStart = 0 }

    /// Returns the head length (through CRLF CRLF) once complete; enforces the size limits and
    /// CRLF-only line endings as bytes arrive. `isRequest` selects 414 for an over-long first line.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer, limits: HeadLimits, isRequest: Bool) throws(HTTPError) -> Int? {
        var i = scanned
        // memchr finds each line feed many bytes at a time; only line ends need a look.
        while i < bytes.count, let found = memchr(bytes.baseAddress! + i, 0x0A, bytes.count - i) {
            i = bytes.baseAddress!.distance(to: UnsafeRawPointer(found))
            if i == 0 || bytes[i - 1] != 0x0D { throw .bareLineFeed }
            if isRequest && lineStart == 0 && i - 1 > limits.requestLineBytes { throw .requestLineTooLong }
            if i - lineStart == 1 && lineStart > 0 {
                reset()
                if i + 1 > limits.headerBytes { throw .headerBlockTooLarge }
                return i + 1
            }
            lineStart = i + 1
            i += 1
        }
        i = bytes.count
        scanned = i
        if isRequest && lineStart == 0 && i > limits.requestLineBytes + 1 { throw .requestLineTooLong }
        if i > limits.headerBytes { throw .headerBlockTooLarge }
        return nil
    }
}

public enum HeadParser {
    /// Parses a complete request head of `length` bytes at the start of `bytes`.
    public static func parseRequest(_ bytes: UnsafeRawBufferPointer, length: Int, limits: HeadLimits) throws(HTTPError) -> RequestHead {
        let copy = Array(UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
        return try withBytes(copy) { (raw) throws(HTTPError) -> RequestHead in
            var cursor = Cursor(raw)
            let lineEnd = try cursor.lineEnd()
            let method = try cursor.token(until: 0x20, end: lineEnd, error: .badRequestLine)
            let targetStart = cursor.position
            while cursor.position < lineEnd && raw[cursor.position] != 0x20 {
                let b = raw[cursor.position]
                guard b > 0x20 && b < 0x7F else { throw .badRequestLine }
                cursor.position += 1
            }
            guard cursor.position > targetStart, cursor.position < lineEnd else { throw .badRequestLine }
            let target = String(decoding: raw[targetStart..<cursor.position], as: UTF8.self)
            cursor.position += 1
            let minor = try cursor.version(end: lineEnd, error: .badRequestLine)
            guard cursor.position == lineEnd else { throw .badRequestLine }
            cursor.position = lineEnd + 2
            let fields = try cursor.headerFields(limit: limits.headerCount)
            let headers = Headers(bytes: copy, fields: fields)

            let hostCount = fields.lazy.filter { $0.known == .host }.count
            if hostCount > 1 || (minor == 1 && hostCount == 0) { throw .missingHost }
            let framing = try requestFraming(headers)
            let upgradeRequested = headers.listContains(.connection, token: "upgrade")
            return RequestHead(
                method: method, target: target, minorVersion: minor, headers: headers, framing: framing,
                keepAlive: keepAlive(headers, minor: minor),
                expectsContinue: headers.first(.expect).map { asciiEqualIgnoringCase($0.utf8, "100-continue".utf8) } ?? false,
                upgrade: upgradeRequested ? headers.first(.upgrade) : nil,
                headLength: length)
        }
    }

    /// Parses a complete response head; `requestMethod` decides whether a body follows.
    public static func parseResponse(_ bytes: UnsafeRawBufferPointer, length: Int, limits: HeadLimits, requestIsHead: Bool) throws(HTTPError) -> ResponseHead {
        let copy = Array(UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
        return try withBytes(copy) { (raw) throws(HTTPError) -> ResponseHead in
            var cursor = Cursor(raw)
            let lineEnd = try cursor.lineEnd()
            let minor = try cursor.version(end: lineEnd, error: .badStatusLine)
            guard cursor.position + 4 <= lineEnd, raw[cursor.position] == 0x20 else { throw .badStatusLine }
            var status = 0
            for k in 1...3 {
                let d = raw[cursor.position + k]
                guard d >= 0x30 && d <= 0x39 else { throw .badStatusLine }
                status = status * 10 + Int(d - 0x30)
            }
            cursor.position += 4
            var reason = ""
            if cursor.position < lineEnd {
                guard raw[cursor.position] == 0x20 else { throw .badStatusLine }
                reason = String(decoding: raw[(cursor.position + 1)..<lineEnd], as: UTF8.self)
            }
            guard status >= 100 else { throw .badStatusLine }
            cursor.position = lineEnd + 2
            let fields = try cursor.headerFields(limit: limits.headerCount)
            let headers = Headers(bytes: copy, fields: fields)
            let bodiless = requestIsHead || status < 200 || status == 204 || status == 304
            let framing = bodiless ? .none : try responseFraming(headers)
            return ResponseHead(status: status, reason: reason, minorVersion: minor, headers: headers,
                                framing: framing, keepAlive: keepAlive(headers, minor: minor), headLength: length)
        }
    }

    private static func keepAlive(_ headers: Headers, minor: Int) -> Bool {
        if headers.listContains(.connection, token: "close") { return false }
        return minor == 1 || headers.listContains(.connection, token: "keep-alive")
    }

    private static func requestFraming(_ headers: Headers) throws(HTTPError) -> BodyFraming {
        let hasTE = headers.fields.contains { $0.known == .transferEncoding }
        let length = try contentLength(headers)
        if hasTE {
            if length != nil { throw .contentLengthAndTransferEncoding }
            guard onlyChunked(headers) else { throw .unsupportedTransferEncoding }
            return .chunked
        }
        // An explicit `Content-Length: 0` is kept: some origins answer 411 to a POST without it.
        if let length { return .length(length) }
        return .none
    }

    private static func responseFraming(_ headers: Headers) throws(HTTPError) -> BodyFraming {
        let hasTE = headers.fields.contains { $0.known == .transferEncoding }
        let length = try contentLength(headers)
        if hasTE {
            if length != nil { throw .contentLengthAndTransferEncoding }
            guard onlyChunked(headers) else { throw .unsupportedTransferEncoding }
            return .chunked
        }
        if let length { return length == 0 ? .none : .length(length) }
        return .untilClose
    }

    /// Transfer-Encoding must be exactly one `chunked` coding; anything else is a smuggling vector.
    private static func onlyChunked(_ headers: Headers) -> Bool {
        var codings = 0
        let allChunked = headers.forEachListItem(in: { $0 == .transferEncoding }) { coding in
            codings += 1
            return coding.equalsIgnoringCase("chunked")
        }
        return allChunked && codings == 1
    }

    /// All Content-Length values (across fields and comma lists) must be equal decimal numbers.
    private static func contentLength(_ headers: Headers) throws(HTTPError) -> Int? {
        var result: Int?
        // `1024, 1024` is allowed (equal repeats), an empty item is not.
        try headers.forEachListItem(in: { $0 == .contentLength }) { (digits) throws(HTTPError) in
            guard !digits.isEmpty, digits.count <= 18 else { throw .invalidContentLength }
            var value = 0
            for d in digits {
                guard d >= 0x30 && d <= 0x39 else { throw .invalidContentLength }
                value = value * 10 + Int(d - 0x30)
            }
            if let result, result != value { throw .conflictingContentLength }
            result = value
            return true
        }
        return result
    }
}

/// `withUnsafeBytes` with a typed error (the standard one only rethrows `any Error`). Always
/// inlined: out of line, its Result wrapping cost the head parser and the list-item walks
/// about 5% (`tollgate-bench heads`).
@inline(__always)
func withBytes<R, E: Error>(_ bytes: [UInt8], _ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
    let result: Result<R, E> = bytes.withUnsafeBytes { raw in
        do throws(E) { return .success(try body(raw)) } catch { return .failure(error) }
    }
    return try result.get()
}

/// A read position over a complete head whose lines are known to end in CRLF.
private struct Cursor {
    let raw: UnsafeRawBufferPointer
    var position = 0

    init(_ raw: UnsafeRawBufferPointer) { self.raw = raw }

    /// Index of the CR that ends the current line; a CR not followed by LF is refused.
    func lineEnd() throws(HTTPError) -> Int {
        // The scanner saw a CRLF ending the head, so a CR is always found.
        let found = memchr(raw.baseAddress! + position, 0x0D, raw.count - position)!
        let i = raw.baseAddress!.distance(to: UnsafeRawPointer(found))
        guard i + 1 < raw.count, raw[i + 1] == 0x0A else { throw .invalidHeaderValue }
        return i
    }

    mutating func token(until terminator: UInt8, end: Int, error: HTTPError) throws(HTTPError) -> String {
        let start = position
        while position < end && raw[position] != terminator {
            guard isTokenChar(raw[position]) else { throw error }
            position += 1
        }
        guard position > start, position < end else { throw error }
        let text = String(decoding: raw[start..<position], as: UTF8.self)
        position += 1
        return text
    }

    /// Reads `HTTP/1.x`; other versions are unsupported, anything else malformed.
    mutating func version(end: Int, error: HTTPError) throws(HTTPError) -> Int {
        guard end - position >= 8 else { throw error }
        let prefix: StaticString = "HTTP/"
        for k in 0..<5 where raw[position + k] != prefix.utf8Start[k] { throw error }
        let major = raw[position + 5], dot = raw[position + 6], minor = raw[position + 7]
        guard dot == UInt8(ascii: "."), major >= 0x30 && major <= 0x39, minor >= 0x30 && minor <= 0x39 else { throw error }
        guard major == UInt8(ascii: "1"), minor <= UInt8(ascii: "1") else { throw .unsupportedVersion }
        position += 8
        return Int(minor - 0x30)
    }

    /// Parses `name: value` lines up to the empty line, rejecting every ambiguity a smuggler uses.
    /// One pass per line: the scanner guarantees the head ends in CRLF CRLF, so the name stops at
    /// its colon or a byte no name may hold, and the value at its first control byte.
    mutating func headerFields(limit: Int) throws(HTTPError) -> ContiguousArray<HeaderField> {
        var fields = ContiguousArray<HeaderField>()
        // Most heads carry fewer: one allocation instead of growing 1, 2, 4, 8, 16.
        fields.reserveCapacity(16)
        while true {
            let first = raw[position]
            if first == 0x0D {
                guard raw[position + 1] == 0x0A else { throw .invalidHeaderValue }
                return fields
            }
            if first == 0x20 || first == 0x09 { throw .obsoleteLineFolding }
            let nameStart = position
            while raw[position] != UInt8(ascii: ":") {
                let b = raw[position]
                if b == 0x20 || b == 0x09 { throw .whitespaceBeforeColon }
                guard isTokenChar(b) else { throw .invalidHeaderName }
                position += 1
            }
            guard position > nameStart else { throw .invalidHeaderName }
            let nameEnd = position
            position += 1
            while raw[position] == 0x20 || raw[position] == 0x09 { position += 1 }
            let valueStart = position
            // Eight bytes at a time while none is a control byte; a word holding one (a tab
            // included) is checked byte by byte up to the line's CR.
            while position + 8 <= raw.count && !hasControlByte(raw.loadUnaligned(fromByteOffset: position, as: UInt64.self)) {
                position += 8
            }
            while true {
                let b = raw[position]
                if b >= 0x20 && b != 0x7F || b == 0x09 {
                    position += 1
                } else if b == 0x0D && raw[position + 1] == 0x0A {
                    break
                } else {
                    throw .invalidHeaderValue
                }
            }
            let end = position
            var valueEnd = end
            while valueEnd > valueStart && (raw[valueEnd - 1] == 0x20 || raw[valueEnd - 1] == 0x09) { valueEnd -= 1 }
            fields.append(HeaderField(
                nameStart: Int32(nameStart), nameCount: Int32(nameEnd - nameStart),
                valueStart: Int32(valueStart), valueCount: Int32(valueEnd - valueStart),
                known: KnownHeader.classify(UnsafeRawBufferPointer(rebasing: raw[nameStart..<nameEnd]))))
            if fields.count > limit { throw .tooManyHeaders }
            position = end + 2
        }
    }
}

/// Whether any of the eight bytes is below 0x20 or is DEL (0x7F): exact, no false positives.
@inline(__always)
func hasControlByte(_ word: UInt64) -> Bool {
    let ones: UInt64 = 0x0101_0101_0101_0101, highs: UInt64 = 0x8080_8080_8080_8080
    let below20 = (word &- ones &* 0x20) & ~word & highs
    let xorDEL = word ^ (ones &* 0x7F)
    let isDEL = (xorDEL &- ones) & ~xorDEL & highs
    return below20 | isDEL != 0
}

/// RFC 9110 tchar as a 128-bit set: a global table would be initialised lazily, and that check
/// ran for every byte of every header name.
@inline(__always)
func isTokenChar(_ byte: UInt8) -> Bool {
    let low: UInt64 = 0x03FF_6CFA_0000_0000   // ! # $ % & ' * + - . 0-9
    let high: UInt64 = 0x57FF_FFFF_C7FF_FFFE  // A-Z ^ _ ` a-z | ~
    return byte < 64 ? (low >> UInt64(byte)) & 1 == 1 : byte < 128 && (high >> UInt64(byte & 63)) & 1 == 1
}
