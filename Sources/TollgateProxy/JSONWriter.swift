import TollgateIO

/// Writes JSON straight into bytes: no Foundation coders on the per-request path.
public struct JSONWriter {
    public private(set) var bytes: [UInt8] = []
    private var needsComma = false

    public init(capacity: Int = 1024) { bytes.reserveCapacity(capacity) }

    public mutating func reset() { bytes.removeAll(keepingCapacity: true); needsComma = false }

    public mutating func beginObject() { separator(); bytes.append(UInt8(ascii: "{")); needsComma = false }
    public mutating func endObject() { bytes.append(UInt8(ascii: "}")); needsComma = true }
    public mutating func newline() { bytes.append(0x0A); needsComma = false }

    public mutating func key(_ name: String) {
        separator()
        string(name)
        bytes.append(UInt8(ascii: ":"))
        needsComma = false
    }

    public mutating func object(_ name: String, _ body: (inout JSONWriter) -> Void) {
        key(name)
        beginObject()
        body(&self)
        endObject()
    }

    public mutating func field(_ name: String, _ value: String?) {
        guard let value else { return }
        key(name)
        string(value)
        needsComma = true
    }

    public mutating func field(_ name: String, _ value: Int?) {
        guard let value else { return }
        key(name)
        integer(value)
        needsComma = true
    }

    public mutating func field(_ name: String, _ value: Bool?) {
        guard let value else { return }
        key(name)
        appendASCII(value ? "true" : "false")
        needsComma = true
    }

    /// An array of strings as a value (after `key`).
    public mutating func stringArray(_ values: [String]) {
        bytes.append(UInt8(ascii: "["))
        for (index, value) in values.enumerated() {
            if index > 0 { bytes.append(UInt8(ascii: ",")) }
            string(value)
        }
        bytes.append(UInt8(ascii: "]"))
        needsComma = true
    }

    /// An IP address as a string field, written without building a String for IPv4.
    public mutating func field(_ name: String, _ ip: IPAddress?) {
        guard let ip else { return }
        key(name)
        if ip.isV4 {
            bytes.append(UInt8(ascii: "\""))
            ip.withV4Octets { a, b, c, d in
                integer(Int(a)); bytes.append(UInt8(ascii: "."))
                integer(Int(b)); bytes.append(UInt8(ascii: "."))
                integer(Int(c)); bytes.append(UInt8(ascii: "."))
                integer(Int(d))
            }
            bytes.append(UInt8(ascii: "\""))
        } else {
            string(ip.description)
        }
        needsComma = true
    }

    /// An ISO 8601 UTC timestamp with milliseconds, from Unix milliseconds.
    public mutating func timestamp(milliseconds: Int64) {
        let days = Int(milliseconds / 86_400_000)
        let msOfDay = Int(milliseconds % 86_400_000)
        let (year, month, day) = civilDate(daysSinceEpoch: days)
        bytes.append(UInt8(ascii: "\""))
        padded(year, 4); bytes.append(UInt8(ascii: "-")); padded(month, 2); bytes.append(UInt8(ascii: "-")); padded(day, 2)
        bytes.append(UInt8(ascii: "T"))
        padded(msOfDay / 3_600_000, 2); bytes.append(UInt8(ascii: ":"))
        padded(msOfDay / 60_000 % 60, 2); bytes.append(UInt8(ascii: ":"))
        padded(msOfDay / 1000 % 60, 2); bytes.append(UInt8(ascii: "."))
        padded(msOfDay % 1000, 3)
        bytes.append(contentsOf: [UInt8(ascii: "Z"), UInt8(ascii: "\"")])
        needsComma = true
    }

    /// A key given as bytes that need no escaping (HTTP header names are tokens), lower-cased.
    public mutating func lowercasedTokenKey<C: Collection>(_ name: C) where C.Element == UInt8 {
        separator()
        bytes.append(UInt8(ascii: "\""))
        for byte in name { bytes.append(byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte) }
        bytes.append(contentsOf: [UInt8(ascii: "\""), UInt8(ascii: ":")])
        needsComma = false
    }

    /// A string value from raw bytes (escaped as needed), without making a String.
    public mutating func stringValue<C: Collection>(bytes value: C) where C.Element == UInt8 {
        bytes.append(UInt8(ascii: "\""))
        for byte in value { appendEscaped(byte) }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    /// Raw bytes appended inside an open string value (after `openString`).
    public mutating func openString() { bytes.append(UInt8(ascii: "\"")) }
    public mutating func appendEscaped<C: Collection>(contentsOf value: C) where C.Element == UInt8 { for byte in value { appendEscaped(byte) } }
    public mutating func closeString() { bytes.append(UInt8(ascii: "\"")); needsComma = true }

    @inline(__always)
    private mutating func appendEscaped(_ byte: UInt8) {
        switch byte {
        case UInt8(ascii: "\""): appendASCII("\\\"")
        case UInt8(ascii: "\\"): appendASCII("\\\\")
        case 0x0A: appendASCII("\\n")
        case 0x0D: appendASCII("\\r")
        case 0x09: appendASCII("\\t")
        case 0..<0x20, 0x7F:
            appendASCII("\\u00")
            bytes.append(hexDigit(byte >> 4))
            bytes.append(hexDigit(byte & 0xF))
        default: bytes.append(byte)
        }
    }

    public mutating func string(_ value: String) {
        bytes.append(UInt8(ascii: "\""))
        // Most values need no escaping: append them in one go.
        var value = value
        let clean = value.withUTF8 { utf8 in
            for byte in utf8 where byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") || byte == 0x7F {
                return false
            }
            bytes.append(contentsOf: utf8)
            return true
        }
        if !clean { value.withUTF8 { for byte in $0 { appendEscaped(byte) } } }
        bytes.append(UInt8(ascii: "\""))
        needsComma = true
    }

    private mutating func separator() { if needsComma { bytes.append(UInt8(ascii: ",")) } }

    private mutating func integer(_ value: Int) {
        if value < 0 { bytes.append(UInt8(ascii: "-")); integer(-value); return }
        if value >= 10 { integer(value / 10) }
        bytes.append(UInt8(ascii: "0") + UInt8(value % 10))
    }

    private mutating func padded(_ value: Int, _ width: Int) {
        var divisor = 1
        for _ in 1..<width { divisor *= 10 }
        var v = value
        while divisor > 0 {
            bytes.append(UInt8(ascii: "0") + UInt8(v / divisor % 10))
            v %= divisor
            divisor /= 10
        }
    }

    private mutating func appendASCII(_ text: StaticString) {
        bytes.append(contentsOf: UnsafeBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    private func hexDigit(_ v: UInt8) -> UInt8 { v < 10 ? 0x30 + v : 0x61 + v - 10 }
}
