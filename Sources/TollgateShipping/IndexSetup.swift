import TollgateConfig
import TollgateIO

/// The index template and ILM policy for flow records: explicit ECS mappings for every field
/// Tollgate writes. `tollgate es template` prints them; deploy/elasticsearch/ holds the same JSON.
public enum IndexSetup {
    public static let templateName = "tollgate-traffic"
    public static let policyName = "tollgate-traffic"

    public static func policy(retentionDays: Int) -> String {
        """
        {"policy":{"phases":{"hot":{"min_age":"0ms","actions":{}},"delete":{"min_age":"\(retentionDays)d","actions":{"delete":{}}}}}}
        """
    }

    public static func template(index: String) -> String {
        func keyword(_ names: [String]) -> String { names.map { "\"\($0)\":{\"type\":\"keyword\",\"ignore_above\":1024}" }.joined(separator: ",") }
        func long(_ names: [String]) -> String { names.map { "\"\($0)\":{\"type\":\"long\"}" }.joined(separator: ",") }
        return """
        {"index_patterns":["\(index)-*"],"priority":250,"template":{"settings":{"index.lifecycle.name":"\(policyName)"},\
        "mappings":{"dynamic":true,"properties":{\
        "@timestamp":{"type":"date"},\
        "event":{"properties":{\(keyword(["kind", "category", "type", "action", "outcome", "reason", "id"])),\(long(["duration"]))}},\
        "observer":{"properties":{\(keyword(["type", "product", "vendor", "version", "hostname"]))}},\
        "source":{"properties":{"ip":{"type":"ip"},\(long(["port", "bytes"]))}},\
        "destination":{"properties":{"ip":{"type":"ip"},\(long(["port", "bytes"])),\(keyword(["domain"]))}},\
        "network":{"properties":{\(keyword(["transport", "protocol"]))}},\
        "url":{"properties":{"full":{"type":"wildcard"},\(keyword(["domain", "path", "query", "scheme"]))}},\
        "http":{"properties":{\(keyword(["version"])),\
        "request":{"properties":{\(keyword(["method"])),"body":{"properties":{\(long(["bytes"]))}},"headers":{"type":"flattened"}}},\
        "response":{"properties":{\(long(["status_code"])),"body":{"properties":{\(long(["bytes"]))}},"headers":{"type":"flattened"}}}}},\
        "user_agent":{"properties":{\(keyword(["original"]))}},\
        "tls":{"properties":{\(keyword(["version", "version_protocol", "cipher"])),"established":{"type":"boolean"},\
        "client":{"properties":{\(keyword(["server_name"]))}}}},\
        "rule":{"properties":{\(keyword(["id", "name", "ruleset"]))}},\
        "error":{"properties":{\(keyword(["type"])),"message":{"type":"text"}}},\
        "tollgate":{"properties":{\(keyword(["agent", "mode", "tls", "decision"])),"upstream_reused":{"type":"boolean"}}}\
        }}}}
        """
    }

    /// Installs the ILM policy and the template on the first node that answers.
    public static func install(_ settings: ElasticsearchSettings) -> Result<String, ClientError> {
        let client: HTTPClient
        do { client = try HTTPClient(caFile: settings.caFile) } catch { return .failure(error) }
        var headers = [("Content-Type", "application/json")]
        if let apiKey = settings.apiKey {
            headers.append(("Authorization", "ApiKey \(apiKey)"))
        } else if let user = settings.username {
            headers.append(("Authorization", "Basic \(base64(Array("\(user):\(settings.password ?? "")".utf8)))"))
        }
        var lastError = ClientError.connect("no node configured")
        for (index, url) in settings.urls.enumerated() {
            guard let node = Node(url: url) else { continue }
            do {
                let policy = try client.send(node: node, index: index, method: "PUT", path: "/_ilm/policy/\(policyName)", headers: headers,
                                             body: Array(Self.policy(retentionDays: settings.retentionDays).utf8), timeout: settings.requestTimeout)
                let template = try client.send(node: node, index: index, method: "PUT", path: "/_index_template/\(templateName)", headers: headers,
                                               body: Array(Self.template(index: settings.index).utf8), timeout: settings.requestTimeout)
                guard template.status / 100 == 2 else {
                    return .failure(.badResponse("PUT _index_template answered \(template.status): \(String(decoding: template.body.prefix(500), as: UTF8.self))"))
                }
                let note = policy.status / 100 == 2 ? "ILM policy \(policyName) (delete after \(settings.retentionDays)d)"
                    : "ILM policy not installed (HTTP \(policy.status)); the template still applies"
                return .success("\(node): index template \(templateName) for \(settings.index)-*; \(note)")
            } catch {
                lastError = error
            }
        }
        return .failure(lastError)
    }
}
