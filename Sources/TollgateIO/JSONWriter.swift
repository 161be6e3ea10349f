#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// Writes JSON straight into bytes — flow records, error bodies, bulk dead letters — without
/// Foundation coders or per-value allocations: one growable buffer, reused across records.
/// Keys are static strings; values are escaped as needed, most of them copied in one go.
public struct JSONWriter: ~Copyable {
    // Internal but inlinable: the record encoder calls key/byte/reserve a hundred times per
    // record, from another module.
    @usableFromInline var storage: UnsafeMutablePointer<UInt8>
    @usableFromInline var capacity: Int
    /// Bytes written so far.
    @usableFromInline var written = 0
    public var count: Int { written }
    @usableFromInline var needsComma = false
    /// The last timestamp's second and its `"YYYY-MM-DDTHH:MM:SS.` (21 bytes, in 24): records
    /// come thousands per second, so the date and time are formatted once a second.
    private var timestampSecond: Int64 = -1
    private var timestampPrefix: (UInt64, UInt64, UInt64) = (0, 0, 0)

    public init(capacity: Int = 1024) {
        self.capacity = max(capacity, 64)
        storage = .allocate(capacity: self.capacity)
    }

    deinit { storage.deallocate() }

    /// The bytes written so far, valid only inside `body`.
    public func withBytes<R>(_ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
        try body(UnsafeRawBufferPointer(start: storage, count: written))
    }

    /// A copy of the bytes written so far (for cold paths).
    public var bytes: [UInt8] { Array(UnsafeBufferPointer(start: storage, count: written)) }

    public mutating func reset() { written = 0; needsComma = false }

    // MARK: Structure

    @inlinable public mutating func beginObject() { separator(); byte(UInt8(ascii: "{")); needsComma = false }
    /// `"name":{` — pair with `endObject()`.
    @inlinable @inline(__always) public mutating func beginObject(_ name: StaticString) { key(name); byte(UInt8(ascii: "{")); needsComma = false }
    @inlinable @inline(__always) public mutating func endObject() { byte(UInt8(ascii: "}")); needsComma = true }
    public mutating func newline() { byte(0x0A); needsComma = false }

    // Always inlined: the key's length is then a constant and its copy a few moves.
    @inlinable @inline(__always) public mutating func key(_ name: StaticString) {
        separator()
        reserve(name.utf8CodeUnitCount + 3)
        storage[written] = UInt8(ascii: "\"")
        // Inlined, the key's length is a constant: the copy compiles to a few moves, no call.
        UnsafeMutableRawPointer(storage + written + 1).copyMemory(from: name.utf8Start, byteCount: name.utf8CodeUnitCount)
        written += name.utf8CodeUnitCount + 1
        storage[written] = UInt8(ascii: "\"")
        storage[written + 1] = UInt8(ascii: ":")
        written += 2
        needsComma = false
    }

    /// A key chosen at run time (escaped like any string).
    public mutating func key(dynamic name: String) {
        separator()
        string(name)
        byte(UInt8(ascii: ":"))
        needsComma = false
    }

    @inlinable public mutating func object(_ name: StaticString, _ body: (inout JSONWriter) -> Void) {
        key(name)
        beginObject()
        body(&self)
        endObject()
    }

    // MARK: Fields (skipped when the value is nil)

    @inlinable @inline(__always) public mutating func field(_ name: StaticString, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
    }

    @inlinable public mutating func field(_ name: StaticString, _ value: Int?) {
        guard let value else { return }
        key(name)
        integer(value)
    }

    /// A value that is a constant JSON literal (a quoted enum name, say).
    @inlinable @inline(__always) public mutating func field(_ name: StaticString, literal value: StaticString?) {
        guard let value else { return }
        key(name)
        literal(value)
    }

    @inlinable public mutating func field(_ name: StaticString, _ value: Bool?) {
        guard let value else { return }
        key(name)
        raw(value ? "true" : "false")
        needsComma = true
    }

    /// An IP address as a string field, written without building a String for IPv4.
    public mutating func field(_ name: StaticString, _ ip: IPAddress?) {
        guard let ip else { return }
        key(name)
        guard ip.isV4 else { return string(ip.description) }
        reserve(17)
        // Octets are stored straight into the buffer: through `decimal`, each one's digits went
        // through scratch memory, and the four calls cost more than the rest of the field.
        var at = storage + written
        at.pointee = UInt8(ascii: "\"")
        ip.withV4Octets { a, b, c, d in
            at = Self.store(octet: a, at: at + 1)
            at.pointee = UInt8(ascii: ".")
            at = Self.store(octet: b, at: at + 1)
            at.pointee = UInt8(ascii: ".")
            at = Self.store(octet: c, at: at + 1)
            at.pointee = UInt8(ascii: ".")
            at = Self.store(octet: d, at: at + 1)
        }
        at.pointee = UInt8(ascii: "\"")
        written = at + 1 - storage
        needsComma = true
    }

    /// `octet` in decimal at `at`; returns where its digits end.
    @inline(__always)
    private static func store(octet: UInt8, at: UnsafeMutablePointer<UInt8>) -> UnsafeMutablePointer<UInt8> {
        if octet >= 100 {
            at[0] = 0x30 &+ octet / 100
            at[1] = 0x30 &+ octet / 10 % 10
            at[2] = 0x30 &+ octet % 10
            return at + 3
        }
        if octet >= 10 {
            at[0] = 0x30 &+ octet / 10
            at[1] = 0x30 &+ octet % 10
            return at + 2
        }
        at[0] = 0x30 &+ octet
        return at + 1
    }

    // MARK: Values (after `key`)

    /// A JSON value written as it is (a literal array, say): no per-call array as a variadic
    /// list of strings would allocate.
    @inlinable @inline(__always) public mutating func literal(_ json: StaticString) {
        raw(json)
        needsComma = true
    }

    @inlinable @inline(__always) public mutating func string(_ value: String) {
        Self.withUTF8(value) { stringValue($0) }
    }

    /// A string value from raw bytes, escaped as needed.
    public mutating func stringValue(_ value: UnsafeRawBufferPointer) {
        reserve(Self.escapedBound(value.count) + 2)
        appendQuotedReserved(value)
        needsComma = true
    }

    public mutating func integer(_ value: Int) {
        decimal(value)
        needsComma = true
    }

    /// An already encoded JSON value, copied as it is.
    public mutating func rawJSON(_ value: UnsafeRawBufferPointer) {
        reserve(value.count)
        if let source = value.baseAddress { (UnsafeMutableRawPointer(storage) + written).copyMemory(from: source, byteCount: value.count) }
        written += value.count
        needsComma = true
    }

    /// Header fields as a JSON object (after `key`), from a head's bytes and its fields'
    /// offsets (`fields`: `count` records `stride` bytes apart, each starting with a
    /// `tg_header_span`): names lower-cased, a repeated name's values joined with ", ", the
    /// values of `secrets` replaced by its marker. One shim call for the whole object.
    public mutating func headerObject(head: UnsafeRawBufferPointer, fields: UnsafeRawPointer?, count: Int, stride: Int,
                                      secrets: SecretHeaderNames) {
        let maxBytes = tg_json_headers_bound(secrets.table, head.count, count)
        reserve(maxBytes)
        let length = tg_json_headers(storage + written, head.baseAddress, fields, count, stride, secrets.table)
        assert(length <= maxBytes, "tg_json_headers wrote \(length) bytes into \(maxBytes)")
        written += length
        needsComma = true
    }

    /// 16 lower-case hex digits of `value`, inside an open string (record ids).
    public mutating func hexDigits(_ value: UInt64) {
        reserve(16)
        for k in 0..<16 {
            let nibble = UInt8(truncatingIfNeeded: value >> (60 - 4 * UInt64(k))) & 0xF
            storage[written + k] = nibble < 10 ? 0x30 + nibble : 0x57 + nibble
        }
        written += 16
    }

    /// An ISO 8601 UTC timestamp with milliseconds, from Unix milliseconds.
    public mutating func timestamp(milliseconds: Int64) {
        reserve(32)
        let second = milliseconds >= 0 ? milliseconds / 1000 : (milliseconds - 999) / 1000
        if second != timestampSecond {
            let start = written
            let days = Int(milliseconds / 86_400_000)
            let msOfDay = Int(milliseconds % 86_400_000)
            let (year, month, day) = civilDate(daysSinceEpoch: days)
            byte(UInt8(ascii: "\""))
            padded(UInt(clamping: year), 4); byte(UInt8(ascii: "-")); padded(UInt(clamping: month), 2); byte(UInt8(ascii: "-")); padded(UInt(clamping: day), 2)
            byte(UInt8(ascii: "T"))
            padded(UInt(clamping: msOfDay / 3_600_000), 2); byte(UInt8(ascii: ":"))
            padded(UInt(clamping: msOfDay / 60_000 % 60), 2); byte(UInt8(ascii: ":"))
            padded(UInt(clamping: msOfDay / 1000 % 60), 2); byte(UInt8(ascii: "."))
            // Only years 0...9999 have this fixed width; others are never cached.
            if written - start == 21 {
                timestampSecond = second
                withUnsafeMutableBytes(of: &timestampPrefix) { $0.copyMemory(from: UnsafeRawBufferPointer(start: storage + start, count: 24)) }
            }
        } else {
            withUnsafeBytes(of: timestampPrefix) { (UnsafeMutableRawPointer(storage) + written).copyMemory(from: $0.baseAddress!, byteCount: 24) }
            written += 21
        }
        padded(UInt(clamping: Int(milliseconds - second * 1000)), 3)
        byte(UInt8(ascii: "Z")); byte(UInt8(ascii: "\""))
        needsComma = true
    }

    // MARK: Strings built from pieces

    public mutating func openString() { byte(UInt8(ascii: "\"")) }
    public mutating func closeString() { byte(UInt8(ascii: "\"")); needsComma = true }

    /// Appends text that needs no escaping inside an open string.
    public mutating func appendLiteral(_ text: StaticString) { raw(text) }

    /// Appends `value` in decimal inside an open string.
    public mutating func appendDecimal(_ value: Int) { decimal(value) }

    /// Appends a String inside an open string, escaped.
    public mutating func appendEscaped(_ value: String) {
        Self.withUTF8(value) { appendEscaped($0) }
    }

    /// Calls `body` with the String's UTF-8 bytes, borrowed (copying it into a var for
    /// `withUTF8` cost a retain and release), or copied when it has no contiguous storage.
    @inlinable @inline(__always)
    static func withUTF8(_ value: String, _ body: (UnsafeRawBufferPointer) -> Void) {
        let done: Void? = value.utf8.withContiguousStorageIfAvailable { body(UnsafeRawBufferPointer($0)) }
        if done == nil { Array(value.utf8).withUnsafeBytes(body) }
    }

    /// Appends `value` inside an open string, escaping what JSON requires.
    public mutating func appendEscaped(_ value: UnsafeRawBufferPointer) {
        reserve(Self.escapedBound(value.count))
        appendEscapedReserved(value)
    }

    /// `value` escaped between quotes, into `escapedBound(value.count) + 2` reserved bytes.
    private mutating func appendQuotedReserved(_ value: UnsafeRawBufferPointer) {
        storage[written] = UInt8(ascii: "\"")
        written += 1
        appendEscapedReserved(value)
        storage[written] = UInt8(ascii: "\"")
        written += 1
    }

    /// Room `appendEscapedReserved` may need for `count` bytes: six per byte (`\u00XX`) and the
    /// last vector's overhang.
    private static func escapedBound(_ count: Int) -> Int { 6 * count + 16 }

    /// `appendEscaped` into reserved room (tg_json_escape: sixteen bytes at a time).
    private mutating func appendEscapedReserved(_ value: UnsafeRawBufferPointer) {
        guard let source = value.baseAddress else { return }
        written += tg_json_escape(storage + written, source, value.count)
    }

    // MARK: Internals

    @inlinable
    mutating func reserve(_ extra: Int) {
        if written + extra > capacity { grow(to: written + extra) }
    }

    @usableFromInline
    mutating func grow(to needed: Int) {
        var newCapacity = capacity * 2
        while newCapacity < needed { newCapacity *= 2 }
        let bigger = UnsafeMutablePointer<UInt8>.allocate(capacity: newCapacity)
        bigger.update(from: storage, count: written)
        storage.deallocate()
        storage = bigger
        capacity = newCapacity
    }

    @inlinable
    mutating func byte(_ value: UInt8) {
        reserve(1)
        storage[written] = value
        written += 1
    }

    @inlinable @inline(__always) mutating func raw(_ text: StaticString) {
        reserve(text.utf8CodeUnitCount)
        UnsafeMutableRawPointer(storage + written).copyMemory(from: text.utf8Start, byteCount: text.utf8CodeUnitCount)
        written += text.utf8CodeUnitCount
    }

    @inlinable
    mutating func separator() { if needsComma { byte(UInt8(ascii: ",")) } }

    private mutating func decimal(_ value: Int) {
        guard value >= 0 else {
            byte(UInt8(ascii: "-"))
            // -Int.min overflows: write its magnitude through UInt.
            return unsignedDecimal(value.magnitude)
        }
        unsignedDecimal(UInt(value))
    }

    /// Digits are produced last to first into scratch words, then copied as a fixed 20 bytes
    /// (the digits and what follows them, overwritten later): one pass of divisions, and a copy
    /// of constant size, a few moves, where a copy of the digits' own length called memmove.
    private mutating func unsignedDecimal(_ value: UInt) {
        reserve(20)
        var scratch: (UInt64, UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0, 0)
        written += withUnsafeMutableBytes(of: &scratch) { digits -> Int in
            var rest = value, index = 20
            repeat {
                index -= 1
                digits[index] = 0x30 &+ UInt8(truncatingIfNeeded: rest % 10)
                rest /= 10
            } while rest != 0
            (UnsafeMutableRawPointer(storage) + written).copyMemory(from: digits.baseAddress! + index, byteCount: 20)
            return 20 - index
        }
    }

    /// `value` in exactly `width` decimal digits (leading zeros).
    private mutating func padded(_ value: UInt, _ width: Int) {
        reserve(width)
        var v = value
        var index = written + width
        while index > written {
            index -= 1
            storage[index] = 0x30 &+ UInt8(truncatingIfNeeded: v % 10)
            v /= 10
        }
        written += width
    }
}

/// Header names whose values records never show, and the marker shown instead: the shim's
/// table for `JSONWriter.headerObject`, built once per configuration.
public final class SecretHeaderNames: @unchecked Sendable {  // immutable after init: loops only read it
    let table: OpaquePointer

    /// `names` in lower case.
    public init(_ names: Set<String>, marker: String) {
        let names = Array(names)
        let markerBytes = Array(marker.utf8)
        guard let table = tg_secret_headers_new(names.flatMap { Array($0.utf8) }, names.map { $0.utf8.count }, names.count,
                                                markerBytes, markerBytes.count) else {
            fatalError("out of memory building the secret header table")
        }
        self.table = table
    }

    deinit { tg_secret_headers_free(table) }
}
