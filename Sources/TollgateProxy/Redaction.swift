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
    /// The `nameBit`s of the secret names: most headers are ruled out by this word alone.
    private let secretBits: UInt64

    public init(extraHeaders: [String]) {
        secretNames = Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() }).map { Array($0.utf8) }
        secretKeys = secretNames.map { name in name.withUnsafeBytes { Self.key($0) } }
        secretBits = secretNames.reduce(0) { bits, name in bits | name.withUnsafeBytes { Self.nameBit($0) } }
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
            // Repeated names share a `nameBit`: a name whose bit no other field has is written
            // without comparing it to the others.
            var seen: UInt64 = 0, shared: UInt64 = 0
            for field in fields {
                let bit = Self.nameBit(bytes(field.nameRange))
                shared |= seen & bit
                seen |= bit
            }
            for index in fields.indices {
                let name = bytes(fields[index].nameRange)
                let bit = Self.nameBit(name)
                let mayRepeat = shared & bit != 0
                if mayRepeat && fields[..<index].contains(where: { sameName(bytes($0.nameRange), name) }) { continue }
                let secret = secretBits & bit != 0 && isSecret(name)
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

    /// One of 64 bits, picked by a hash of the name's length and first four bytes (case folded):
    /// equal names (in any case) get the same bit, most different ones another. By length alone,
    /// Date and ETag, Last-Modified and Accept-Ranges, Server and Cookie all looked alike.
    private static func nameBit(_ name: UnsafeRawBufferPointer) -> UInt64 {
        1 << ((key(name) &* 0x9E37_79B9_7F4A_7C15) >> 58)
    }

    /// Whether `name` is a secret one (called only when its `nameBit` is among `secretBits`).
    private func isSecret(_ name: UnsafeRawBufferPointer) -> Bool {
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
