import TollgateConfig
import TollgateIO

/// The index template and ILM policy for flow records: explicit ECS mappings for every field
/// Tollgate writes. `tollgate es template` prints them; deploy/elasticsearch/ holds the same JSON
/// (a test keeps the two identical).
public enum IndexSetup {
    public static let templateName = "tollgate-traffic"
    public static let policyName = "tollgate-traffic"

    public static func policy(retentionDays: Int) -> String {
        #"{"policy":{"_meta":{"description":"Tollgate flow records: delete daily indices \#(retentionDays) days after creation","managed_by":"tollgate"},"phases":{"hot":{"min_age":"0ms","actions":{}},"delete":{"min_age":"\#(retentionDays)d","actions":{"delete":{}}}}}}"#
    }

    /// The composable template (the JSON in deploy/elasticsearch/index-template.json, with the
    /// configured index prefix): explicit mappings for every field, keywords for later additions.
    public static func template(index: String) -> String {
        #"{"index_patterns":["\#(index)-*"],"priority":250,"_meta":{"description":"Tollgate flow records (ECS); one document per HTTP exchange, tunnel, TCP relay, denial or TLS failure","managed_by":"tollgate"},"template":{"settings":{"index.lifecycle.name":"tollgate-traffic","index.number_of_shards":1,"index.refresh_interval":"5s"},"mappings":{"dynamic":true,"date_detection":false,"dynamic_templates":[{"tollgate_strings_as_keywords":{"path_match":"tollgate.*","match_mapping_type":"string","mapping":{"type":"keyword","ignore_above":1024}}},{"strings_as_keywords":{"match_mapping_type":"string","mapping":{"type":"keyword","ignore_above":1024}}}],"properties":{"@timestamp":{"type":"date"},"event":{"properties":{"kind":{"type":"keyword"},"category":{"type":"keyword"},"type":{"type":"keyword"},"action":{"type":"keyword"},"outcome":{"type":"keyword"},"reason":{"type":"keyword"},"duration":{"type":"long"},"id":{"type":"keyword"}}},"observer":{"properties":{"type":{"type":"keyword"},"product":{"type":"keyword"},"vendor":{"type":"keyword"},"version":{"type":"keyword"},"hostname":{"type":"keyword"}}},"source":{"properties":{"ip":{"type":"ip"},"port":{"type":"long"},"bytes":{"type":"long"}}},"destination":{"properties":{"ip":{"type":"ip"},"port":{"type":"long"},"domain":{"type":"keyword"},"bytes":{"type":"long"}}},"network":{"properties":{"transport":{"type":"keyword"},"protocol":{"type":"keyword"}}},"url":{"properties":{"full":{"type":"wildcard"},"scheme":{"type":"keyword"},"domain":{"type":"keyword"},"port":{"type":"long"},"path":{"type":"keyword","ignore_above":2048},"query":{"type":"keyword","ignore_above":2048}}},"http":{"properties":{"version":{"type":"keyword"},"request":{"properties":{"method":{"type":"keyword"},"body":{"properties":{"bytes":{"type":"long"}}},"headers":{"type":"flattened","ignore_above":1024}}},"response":{"properties":{"status_code":{"type":"long"},"body":{"properties":{"bytes":{"type":"long"}}},"headers":{"type":"flattened","ignore_above":1024}}}}},"user_agent":{"properties":{"original":{"type":"keyword","ignore_above":1024,"fields":{"text":{"type":"match_only_text"}}}}},"tls":{"properties":{"version":{"type":"keyword"},"version_protocol":{"type":"keyword"},"cipher":{"type":"keyword"},"established":{"type":"boolean"},"client":{"properties":{"server_name":{"type":"keyword"}}}}},"rule":{"properties":{"id":{"type":"keyword"},"name":{"type":"keyword"},"ruleset":{"type":"keyword"}}},"error":{"properties":{"type":{"type":"keyword"},"message":{"type":"match_only_text","fields":{"keyword":{"type":"keyword","ignore_above":1024}}}}},"tollgate":{"dynamic":true,"properties":{"agent":{"type":"keyword"},"mode":{"type":"keyword"},"decision":{"type":"keyword"},"tls":{"type":"keyword"},"upstream_reused":{"type":"boolean"}}}}}}}"#
    }

    /// Installs the ILM policy and the template on the first node that answers.
    public static func install(_ settings: ElasticsearchSettings) -> Result<String, ClientError> {
        let client: HTTPClient
        do { client = try HTTPClient(caFile: settings.caFile) } catch { return .failure(error) }
        let headers = [("Content-Type", "application/json")] + authorizationHeader(settings)
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
