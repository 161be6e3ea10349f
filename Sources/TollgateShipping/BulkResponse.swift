import Foundation

/// What Elasticsearch said about each item of a `_bulk` request, in request order.
struct BulkItemResult: Sendable {
    let status: Int
    let errorType: String?
    let errorReason: String?
}

enum BulkResponse {
    /// `"errors": false` near the start of the answer: every item succeeded, nothing to inspect.
    static func reportsNoErrors(_ body: [UInt8]) -> Bool {
        let window = Array(body.prefix(512))
        let key = Array("\"errors\"".utf8), value = Array("false".utf8)
        var start = 0
        while start + key.count <= window.count {
            if window[start..<(start + key.count)].elementsEqual(key) {
                var i = start + key.count
                while i < window.count && (window[i] == 0x20 || window[i] == UInt8(ascii: ":")) { i += 1 }
                return i + value.count <= window.count && window[i..<(i + value.count)].elementsEqual(value)
            }
            start += 1
        }
        return false
    }

    /// The per-item results of a 2xx `_bulk` answer, or nil when the body is not the documented
    /// shape (then the whole request is retried: never acknowledge on a guess).
    static func items(_ body: [UInt8], expected: Int) -> [BulkItemResult]? {
        // Runs on the shipper thread only; Foundation's parser is fine off the event loops.
        guard let root = try? JSONSerialization.jsonObject(with: Data(body)) as? [String: Any],
              let items = root["items"] as? [[String: Any]], items.count == expected else { return nil }
        var results: [BulkItemResult] = []
        results.reserveCapacity(items.count)
        for item in items {
            guard let action = (item["create"] ?? item["index"]) as? [String: Any], let status = action["status"] as? Int else { return nil }
            let error = action["error"] as? [String: Any]
            results.append(BulkItemResult(status: status, errorType: error?["type"] as? String, errorReason: error?["reason"] as? String))
        }
        return results
    }
}
