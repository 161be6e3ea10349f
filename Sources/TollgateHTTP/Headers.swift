/// Header names the proxy acts on, recognised once while parsing so later code compares tags.
public enum KnownHeader: UInt8, Sendable {
    case other, host, contentLength, transferEncoding, connection, keepAlive, proxyConnection
    case te, trailer, upgrade, expect, proxyAuthorization, proxyAuthenticate, via, userAgent

    static func classify(_ name: UnsafeRawBufferPointer) -> KnownHeader {
        switch name.count {
        case 2: return name.equalsIgnoringCase("te") ? .te : .other
        case 3: return name.equalsIgnoringCase("via") ? .via : .other
        case 4: return name.equalsIgnoringCase("host") ? .host : .other
        case 6: return name.equalsIgnoringCase("expect") ? .expect : .other
        case 7:
            if name.equalsIgnoringCase("upgrade") { return .upgrade }
            return name.equalsIgnoringCase("trailer") ? .trailer : .other
        case 10:
            if name.equalsIgnoringCase("connection") { return .connection }
            if name.equalsIgnoringCase("keep-alive") { return .keepAlive }
            return name.equalsIgnoringCase("user-agent") ? .userAgent : .other
        case 14: return name.equalsIgnoringCase("content-length") ? .contentLength : .other
        case 16: return name.equalsIgnoringCase("proxy-connection") ? .proxyConnection : .other
        case 17: return name.equalsIgnoringCase("transfer-encoding") ? .transferEncoding : .other
        case 18: return name.equalsIgnoringCase("proxy-authenticate") ? .proxyAuthenticate : .other
        case 19: return name.equalsIgnoringCase("proxy-authorization") ? .proxyAuthorization : .other
        default: return .other
        }
    }

    /// Hop-by-hop fields (RFC 9110 §7.6.1) that a proxy never forwards as received.
    var isHopByHop: Bool {
        switch self {
        case .connection, .keepAlive, .proxyConnection, .te, .trailer, .upgrade, .transferEncoding,
             .proxyAuthorization, .proxyAuthenticate, .contentLength:
            return true  // Content-Length is rewritten from the validated framing
        default:
            return false
        }
    }
}

/// One header field as offsets into the head's byte copy.
public struct HeaderField: Sendable {
    // The four offsets come first and in this order: the C shim reads them as a
    // `tg_header_span` (see `Headers.withFieldSpans`; Swift lays a struct's stored properties
    // out in declaration order).
    let nameStart: Int32
    let nameCount: Int32
    let valueStart: Int32
    let valueCount: Int32
    public let known: KnownHeader

    /// Where the name and the value sit in the head's bytes (see `Headers.withUnsafeBytes`).
    public var nameRange: Range<Int> { Int(nameStart)..<Int(nameStart + nameCount) }
    public var valueRange: Range<Int> { Int(valueStart)..<Int(valueStart + valueCount) }
}

/// The header fields of one message: a single copy of the head bytes plus field offsets.
public struct Headers: Sendable {
    @usableFromInline let bytes: [UInt8]
    public internal(set) var fields: ContiguousArray<HeaderField>

    init(bytes: [UInt8], fields: ContiguousArray<HeaderField>) {
        self.bytes = bytes
        self.fields = fields
    }

    /// The head's bytes, for reading many fields by their ranges without slicing arrays.
    public func withUnsafeBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try bytes.withUnsafeBytes(body)
    }

    /// The head's bytes and the fields as C reads them: `count` records `stride` bytes apart,
    /// each starting with its name's and value's offsets (a `tg_header_span`).
    @inlinable
    public func withFieldSpans<R>(_ body: (_ head: UnsafeRawBufferPointer, _ fields: UnsafeRawPointer?, _ count: Int,
                                           _ stride: Int) -> R) -> R {
        bytes.withUnsafeBytes { head in
            fields.withUnsafeBytes { body(head, $0.baseAddress, fields.count, MemoryLayout<HeaderField>.stride) }
        }
    }

    public func name(_ field: HeaderField) -> ArraySlice<UInt8> {
        bytes[Int(field.nameStart)..<Int(field.nameStart + field.nameCount)]
    }

    public func value(_ field: HeaderField) -> ArraySlice<UInt8> {
        bytes[Int(field.valueStart)..<Int(field.valueStart + field.valueCount)]
    }

    /// The first value of a known header as a String (for records and routing, not for framing).
    public func first(_ known: KnownHeader) -> String? {
        guard let field = fields.first(where: { $0.known == known }) else { return nil }
        return String(decoding: value(field), as: UTF8.self)
    }

    /// The first value of the header named `name` (ASCII case-insensitive).
    public func first(named name: String) -> String? {
        for field in fields where asciiEqualIgnoringCase(self.name(field), name.utf8) {
            return String(decoding: value(field), as: UTF8.self)
        }
        return nil
    }

    /// True when a comma-separated list header of kind `known` contains `token` (case-insensitive).
    public func listContains(_ known: KnownHeader, token: StaticString) -> Bool {
        containsListItem(in: { $0 == known }) { $0.equalsIgnoringCase(token) }
    }

    /// True when a Connection (or Proxy-Connection) header lists something besides `close` and
    /// `keep-alive`, which is how a sender names further fields hop-by-hop.
    var connectionNamesFields: Bool {
        containsListItem(in: Self.isConnection) { item in
            !item.isEmpty && !item.equalsIgnoringCase("close") && !item.equalsIgnoringCase("keep-alive")
        }
    }

    /// True when the Connection (or Proxy-Connection) header names `name` as an extra hop-by-hop
    /// field (RFC 9110 §7.6.1).
    func isNamedByConnection(_ name: UnsafeRawBufferPointer) -> Bool {
        containsListItem(in: Self.isConnection) { asciiEqualIgnoringCase($0, name) }
    }

    private static func isConnection(_ known: KnownHeader) -> Bool { known == .connection || known == .proxyConnection }

    /// True when some item of a comma-separated field of a kind `isList` accepts satisfies `matches`.
    private func containsListItem(in isList: (KnownHeader) -> Bool, where matches: (UnsafeRawBufferPointer) -> Bool) -> Bool {
        !forEachListItem(in: isList) { !matches($0) }
    }

    /// Visits, in order, the items of the comma-separated fields of a kind `isList` accepts until
    /// `visit` returns false; false when it did. Items are views into the head's bytes: slices
    /// of its array retained and released it per item.
    @discardableResult @inline(__always)
    func forEachListItem<E: Error>(in isList: (KnownHeader) -> Bool, _ visit: (UnsafeRawBufferPointer) throws(E) -> Bool) throws(E) -> Bool {
        try withBytes(bytes) { (raw) throws(E) -> Bool in
            for field in fields where isList(field.known) {
                for item in ListItems(UnsafeRawBufferPointer(rebasing: raw[field.valueRange])) where try !visit(item) { return false }
            }
            return true
        }
    }
}

/// The items of a comma-separated header value, OWS-trimmed, empty ones included (callers that
/// must refuse them can), as views into the value's bytes.
struct ListItems: Sequence, IteratorProtocol {
    private let list: UnsafeRawBufferPointer
    private var start = 0
    private var done = false

    init(_ list: UnsafeRawBufferPointer) { self.list = list }

    mutating func next() -> UnsafeRawBufferPointer? {
        guard !done else { return nil }
        var end = start
        while end < list.count && list[end] != UInt8(ascii: ",") { end += 1 }
        done = end == list.count
        var lower = start, upper = end
        while lower < upper && (list[lower] == 0x20 || list[lower] == 0x09) { lower += 1 }
        while upper > lower && (list[upper - 1] == 0x20 || list[upper - 1] == 0x09) { upper -= 1 }
        start = end + 1
        return UnsafeRawBufferPointer(rebasing: list[lower..<upper])
    }
}

func asciiEqualIgnoringCase<A: Collection, B: Collection>(_ a: A, _ b: B) -> Bool where A.Element == UInt8, B.Element == UInt8 {
    guard a.count == b.count else { return false }
    for (x, y) in zip(a, b) where lowerASCII(x) != lowerASCII(y) { return false }
    return true
}

@inline(__always)
func lowerASCII(_ byte: UInt8) -> UInt8 {
    byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte
}

extension UnsafeRawBufferPointer {
    func equalsIgnoringCase(_ text: StaticString) -> Bool {
        guard count == text.utf8CodeUnitCount else { return false }
        let other = text.utf8Start
        for i in 0..<count where lowerASCII(self[i]) != lowerASCII(other[i]) { return false }
        return true
    }
}

