import CTollgateShim
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
    /// Names of headers whose values are never recorded, as the shim's header writer reads them.
    private let secretHeaders: SecretHeaderTable

    public init(extraHeaders: [String]) {
        secretHeaders = SecretHeaderTable(names: Set(Self.builtInHeaders + extraHeaders.map { $0.lowercased() }), marker: Self.marker)
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
        withExtendedLifetime(secretHeaders) { owner in
            let secrets = owner.table
            headers.withFieldSpans { head, fields, count, stride in
                out.rawJSON(maxBytes: tg_json_headers_bound(secrets, head.count, count)) { destination in
                    tg_json_headers(destination, head.baseAddress, fields, count, stride, secrets)
                }
            }
        }
    }
}

/// The shim's table of secret header names, owned: built once per configuration, read by
/// every event loop, never changed.
private final class SecretHeaderTable: @unchecked Sendable {  // immutable after init: loops only read it
    let table: OpaquePointer

    init(names: Set<String>, marker: String) {
        let names = Array(names)
        let joined = names.flatMap { Array($0.utf8) }
        let lengths = names.map { $0.utf8.count }
        let markerBytes = Array(marker.utf8)
        guard let table = tg_secret_headers_new(joined, lengths, names.count, markerBytes, markerBytes.count) else {
            fatalError("out of memory building the secret header table")
        }
        self.table = table
    }

    deinit { tg_secret_headers_free(table) }
}
