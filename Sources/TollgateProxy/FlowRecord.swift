// TollgateProxy: the daemon — listeners, proxy sessions, the upstream pool and flow records.
import TollgateHTTP
import TollgateIO
import TollgateShipping

/// One flow: an HTTP exchange, a tunnel, a raw TCP relay or a refused connection. Field names
/// follow ECS; `tollgate.*` holds our own. Later issues add fields (TLS, rule, budget) here.
public struct FlowRecord {
    public enum Action: String {
        case httpRequest = "http_request", tunnel, tcpRelay = "tcp_relay", rejected
        case tlsFailed = "tls_failed"
        case tlsClientRejectedCertificate = "tls.client_rejected_certificate"
    }

    public var timestampMilliseconds: Int64
    public var durationNanoseconds: UInt64 = 0
    public var action: Action
    public var sourceIP: IPAddress
    public var sourcePort: UInt16
    public var destinationIP: IPAddress?
    public var destinationPort: UInt16?
    public var destinationDomain: String?
    /// Bytes the client sent / received over the whole flow (tunnels, relays).
    public var sourceBytes: Int?
    public var destinationBytes: Int?
    public var urlFull: String?
    public var urlDomain: String?
    public var urlPath: String?
    /// Already redacted.
    public var urlQuery: String?
    /// Heads as parsed; written with secret values redacted.
    public var requestHeaders: Headers?
    public var responseHeaders: Headers?
    public var httpVersion: String?
    public var method: String?
    public var requestBodyBytes: Int?
    public var statusCode: Int?
    public var responseBodyBytes: Int?
    public var userAgent: String?
    /// `http`, `websocket`, `tls`, `tcp`.
    public var networkProtocol: String
    public var agent: String
    /// `transparent` or `explicit`.
    public var mode: String
    public var upstreamReused: Bool?
    /// TLS as seen by the agent: `1.3`, cipher, SNI, whether the handshake completed, and what
    /// Tollgate did with it (`intercepted`, `spliced`, `failed`).
    public var tlsVersion: String?
    public var tlsCipher: String?
    public var tlsServerName: String?
    public var tlsEstablished: Bool?
    public var tlsHandling: String?
    /// The policy's verdict (`allow`, `deny`, `splice`, `report`), the rule and its file, and why.
    public var decision: String?
    public var ruleName: String?
    public var ruleset: String?
    public var reason: String?
    public var errorType: String?
    public var errorMessage: String?

    public init(start: Int64, action: Action, source: SocketAddress, networkProtocol: String, agent: String, mode: String) {
        timestampMilliseconds = start
        self.action = action
        sourceIP = source.ip
        sourcePort = source.port
        self.networkProtocol = networkProtocol
        self.agent = agent
        self.mode = mode
    }

    /// Who wrote the record (ECS `observer`): the same in every record, so encoded once.
    public struct Observer: Sendable {
        let encoded: [UInt8]

        public init(hostname: String, version: String) {
            var out = JSONWriter(capacity: 128)
            out.beginObject()
            out.field("type", "proxy")
            out.field("product", "tollgate")
            out.field("vendor", "tollgate")
            out.field("version", version)
            out.field("hostname", hostname)
            out.endObject()
            encoded = out.bytes
        }
    }

    /// Appends the record as one JSON line; `id` becomes `event.id` (and the Elasticsearch `_id`).
    public func encode(into out: inout JSONWriter, id: RecordID, observer: Observer, redaction: Redaction) {
        out.beginObject()
        out.key("@timestamp"); out.timestamp(milliseconds: timestampMilliseconds)
        out.object("event") { w in
            w.key("id"); id.write(into: &w)
            w.field("kind", "event")
            w.key("category")
            if method != nil { w.stringArray("network", "web") } else { w.stringArray("network") }
            w.key("type")
            if decision == "deny" || action == .rejected {
                w.stringArray("denied")
            } else if method != nil {
                w.stringArray("access")
            } else {
                w.stringArray("connection")
            }
            w.field("action", action.rawValue)
            w.field("duration", Int(durationNanoseconds))
            w.field("outcome", errorType == nil && decision != "deny" ? "success" : "failure")
            w.field("reason", reason)
        }
        out.object("source") { w in
            w.field("ip", sourceIP)
            w.field("port", Int(sourcePort))
            w.field("bytes", sourceBytes)
        }
        if destinationIP != nil || destinationDomain != nil {
            out.object("destination") { w in
                w.field("ip", destinationIP)
                w.field("port", destinationPort.map(Int.init))
                w.field("domain", destinationDomain)
                w.field("bytes", destinationBytes)
            }
        }
        out.key("observer")
        observer.encoded.withUnsafeBytes { out.rawJSON($0) }
        if urlFull != nil {
            out.object("url") { w in
                w.field("full", urlFull)
                w.field("domain", urlDomain)
                w.field("path", urlPath)
                w.field("query", urlQuery)
            }
        }
        if method != nil || statusCode != nil {
            out.object("http") { w in
                w.field("version", httpVersion)
                if method != nil || requestBodyBytes != nil {
                    w.object("request") { w in
                        w.field("method", method)
                        w.object("body") { $0.field("bytes", requestBodyBytes ?? 0) }
                        if let requestHeaders { w.key("headers"); redaction.write(requestHeaders, into: &w) }
                    }
                }
                if let statusCode {
                    w.object("response") { w in
                        w.field("status_code", statusCode)
                        w.object("body") { $0.field("bytes", responseBodyBytes ?? 0) }
                        if let responseHeaders { w.key("headers"); redaction.write(responseHeaders, into: &w) }
                    }
                }
            }
        }
        if let userAgent { out.object("user_agent") { $0.field("original", userAgent) } }
        out.object("network") { w in
            w.field("protocol", networkProtocol)
            w.field("transport", "tcp")
        }
        if ruleName != nil {
            out.object("rule") { w in
                w.field("name", ruleName)
                w.field("ruleset", ruleset)
            }
        }
        if tlsHandling != nil {
            out.object("tls") { w in
                w.field("version", tlsVersion)
                w.field("version_protocol", tlsVersion == nil ? nil : "tls")
                w.field("cipher", tlsCipher)
                w.field("established", tlsEstablished)
                if let tlsServerName { w.object("client") { $0.field("server_name", tlsServerName) } }
            }
        }
        out.object("tollgate") { w in
            w.field("agent", agent)
            w.field("mode", mode)
            w.field("tls", tlsHandling)
            w.field("decision", decision)
            w.field("upstream_reused", upstreamReused)
        }
        if let errorType {
            out.object("error") { w in
                w.field("type", errorType)
                w.field("message", errorMessage)
            }
        }
        out.endObject()
        out.newline()
    }
}
