import TollgateHTTP

/// Keeps secrets out of records: header values by name, query parameters by a name pattern.
struct Redaction: Sendable {
    static let marker = "[redacted]"
    private static let builtInHeaders = ["authorization", "proxy-authorization", "cookie", "set-cookie", "x-vault-token",
                                         "x-api-key", "api-key"]
    /// Substrings that make a query parameter secret (matched case-insensitively).
    private static let secretParameterParts = ["token", "key", "secret", "password", "passwd", "auth", "signature", "sig",
                                               "credential", "session"]
    private let headerNames: Set<String>

    init(extraHeaders: [String]) {
        headerNames = Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() })
    }

    func isSecretHeader(_ lowercasedName: String) -> Bool { headerNames.contains(lowercasedName) }

    /// The query with the values of secret-looking parameters replaced.
    static func query(_ query: Substring) -> String {
        guard !query.isEmpty else { return "" }
        return query.split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            guard let equals = pair.firstIndex(of: "=") else { return String(pair) }
            let name = pair[..<equals].lowercased()
            return secretParameterParts.contains(where: { name.contains($0) }) ? "\(pair[..<equals])=\(marker)" : String(pair)
        }.joined(separator: "&")
    }

    /// Writes headers as an object of lower-case names to values (repeated fields comma-joined).
    func write(_ headers: Headers, into out: inout JSONWriter) {
        var names: [String] = []
        names.reserveCapacity(headers.fields.count)
        for field in headers.fields { names.append(String(decoding: headers.name(field), as: UTF8.self).lowercased()) }
        out.beginObject()
        for (index, name) in names.enumerated() where !names[..<index].contains(name) {
            if isSecretHeader(name) {
                out.field(name, Self.marker)
                continue
            }
            var value = String(decoding: headers.value(headers.fields[index]), as: UTF8.self)
            for later in (index + 1)..<names.count where names[later] == name {
                value += ", " + String(decoding: headers.value(headers.fields[later]), as: UTF8.self)
            }
            out.field(name, value)
        }
        out.endObject()
    }
}
