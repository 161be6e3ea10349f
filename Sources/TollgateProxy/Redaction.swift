import TollgateHTTP
import TollgateIO

/// Keeps secrets out of records: header values by name, query parameters by a name pattern.
public struct Redaction: Sendable {
    static let marker = "[redacted]"
    private static let builtInHeaders = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-vault-token",
                                         "x-api-key", "api-key"]
    /// Substrings that make a query parameter secret (matched case-insensitively).
    private static let secretParameterParts = ["token", "key", "secret", "password", "passwd", "auth", "signature", "sig",
                                               "credential", "session"]
    /// Names of headers whose values are never recorded, lower case.
    private let secretNames: [[UInt8]]
    /// Per secret name, what is compared before its bytes: its length (high half) and its first
    /// four bytes folded to lower case (low half). Plain integers, so the scan retains nothing.
    private let secretKeys: [UInt64]
    /// Bit n set when some secret name is n bytes long: most headers are ruled out by length alone.
    private let secretLengths: UInt64

    public init(extraHeaders: [String]) {
        secretNames = Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() }).map { Array($0.utf8) }
        secretKeys = secretNames.map { name in name.withUnsafeBytes { Self.key($0) } }
        secretLengths = secretNames.reduce(0) { $0 | Self.lengthBit($1.count) }
    }

    /// The query with the values of secret-looking parameters replaced.
    static func query(_ query: Substring) -> String {
        guard !query.isEmpty else { return "" }
        return query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            guard let equals = pair.firstIndex(of: "=") else { return String(pair) }
            let name = pair[..<equals].lowercased()
            return secretParameterParts.contains(where: { name.contains($0) }) ? "\(pair[..<equals])=\(marker)" : String(pair)
        }.joined(separator: "&")
    }

    /// Writes headers as an object of lower-case names to values (repeated fields comma-joined),
    /// straight from the head's bytes.
    func write(_ headers: Headers, into out: inout JSONWriter) {
        out.beginObject()
        headers.withUnsafeBytes { head in
            func bytes(_ range: Range<Int>) -> UnsafeRawBufferPointer { UnsafeRawBufferPointer(rebasing: head[range]) }
            let fields = headers.fields
            // Repeated names share a length: a name whose length no other field has is written
            // without comparing it to the others.
            var lengths: UInt64 = 0, sharedLengths: UInt64 = 0
            for field in fields {
                let bit = Self.lengthBit(field.nameRange.count)
                sharedLengths |= lengths & bit
                lengths |= bit
            }
            for index in fields.indices {
                let name = bytes(fields[index].nameRange)
                let mayRepeat = sharedLengths & Self.lengthBit(name.count) != 0
                if mayRepeat && fields[..<index].contains(where: { sameName(bytes($0.nameRange), name) }) { continue }
                let secret = isSecret(name)
                if !mayRepeat && !secret {
                    out.lowercasedTokenMember(name, value: bytes(fields[index].valueRange))
                    continue
                }
                out.lowercasedTokenKey(name)
                out.openString()
                if secret {
                    out.appendLiteral("[redacted]")  // Self.marker, without a static array
                } else {
                    out.appendEscaped(bytes(fields[index].valueRange))
                    if mayRepeat {
                        for later in fields[(index + 1)...] where sameName(bytes(later.nameRange), name) {
                            out.appendLiteral(", ")
                            out.appendEscaped(bytes(later.valueRange))
                        }
                    }
                }
                out.closeString()
            }
        }
        out.endObject()
    }

    /// Bit n for a name n bytes long (bit 63 for 63 and longer).
    private static func lengthBit(_ count: Int) -> UInt64 { count < 63 ? 1 << UInt64(count) : 1 << 63 }

    private func isSecret(_ name: UnsafeRawBufferPointer) -> Bool {
        guard secretLengths & Self.lengthBit(name.count) != 0 else { return false }
        let key = Self.key(name)
        for index in secretKeys.indices where secretKeys[index] == key {
            if secretNames[index].withUnsafeBytes({ sameName($0, name) }) { return true }
        }
        return false
    }

    /// Length and first four bytes (each with bit 0x20 set, the case folding `sameName` uses).
    private static func key(_ name: UnsafeRawBufferPointer) -> UInt64 {
        let prefix = name.count >= 4 ? name.loadUnaligned(as: UInt32.self) | 0x2020_2020 : 0
        return UInt64(name.count) << 32 | UInt64(prefix)
    }

    private func sameName(_ a: UnsafeRawBufferPointer, _ b: UnsafeRawBufferPointer) -> Bool {
        guard a.count == b.count else { return false }
        for index in 0..<a.count where a[index] | 0x20 != b[index] | 0x20 { return false }
        return true
    }
}
