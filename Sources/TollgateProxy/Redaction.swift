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
    /// Names of headers whose values are never recorded.
    private let secretHeaders: SecretHeaderNames

    public init(extraHeaders: [String]) {
        secretHeaders = SecretHeaderNames(Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() }), marker: Self.marker)
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

    /// Writes headers as an object of lower-case names to values (repeated fields comma-joined,
    /// secret ones replaced by the marker), straight from the head's bytes in one shim call.
    func write(_ headers: Headers, into out: inout JSONWriter) {
        headers.withFieldSpans { head, fields, count, stride in
            out.headerObject(head: head, fields: fields, count: count, stride: stride, secrets: secretHeaders)
        }
    }
}
