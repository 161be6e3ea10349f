import TollgateHTTP

/// Keeps secrets out of records: header values by name, query parameters by a name pattern.
public struct Redaction: Sendable {
    static let marker = "[redacted]"
    private static let builtInHeaders = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-vault-token",
                                         "x-api-key", "api-key"]
    /// Substrings that make a query parameter secret (matched case-insensitively).
    private static let secretParameterParts = ["token", "key", "secret", "password", "passwd", "auth", "signature", "sig",
                                               "credential", "session"]
    /// Lower-case names of headers whose values are never recorded.
    private let secretHeaderBytes: [[UInt8]]

    public init(extraHeaders: [String]) {
        secretHeaderBytes = Array(Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() })).map { Array($0.utf8) }
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
        let fields = headers.fields
        for index in fields.indices {
            let name = headers.name(fields[index])
            if fields[..<index].contains(where: { sameName(headers.name($0), name) }) { continue }
            out.lowercasedTokenKey(name)
            if isSecret(name) {
                out.stringValue(bytes: Self.markerBytes)
                continue
            }
            out.openString()
            out.appendEscaped(contentsOf: headers.value(fields[index]))
            for later in fields[(index + 1)...] where sameName(headers.name(later), name) {
                out.appendEscaped(contentsOf: Self.separator)
                out.appendEscaped(contentsOf: headers.value(later))
            }
            out.closeString()
        }
        out.endObject()
    }

    private static let markerBytes = Array(marker.utf8)
    private static let separator = Array(", ".utf8)

    private func isSecret(_ name: ArraySlice<UInt8>) -> Bool {
        secretHeaderBytes.contains { sameName($0[...], name) }
    }

    private func sameName(_ a: ArraySlice<UInt8>, _ b: ArraySlice<UInt8>) -> Bool {
        guard a.count == b.count else { return false }
        for (x, y) in zip(a, b) where x | 0x20 != y | 0x20 { return false }
        return true
    }
}
