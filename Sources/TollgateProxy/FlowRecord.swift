// TollgateProxy: the daemon — listeners, proxy sessions, the upstream pool and flow records.
import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateShipping

/// One flow: an HTTP exchange, a tunnel, a raw TCP relay or a refused connection. Field names
/// follow ECS; `tollgate.*` holds our own. Later issues add fields (TLS, rule, budget) here.
public struct FlowRecord: Sendable {
    /// `event.action`.
    public enum Action: Sendable {
        case httpRequest, tunnel, tcpRelay, rejected, tlsFailed, tlsClientRejectedCertificate

        var json: StaticString {
            switch self {
            case .httpRequest: #""http_request""#
            case .tunnel: #""tunnel""#
            case .tcpRelay: #""tcp_relay""#
            case .rejected: #""rejected""#
            case .tlsFailed: #""tls_failed""#
            case .tlsClientRejectedCertificate: #""tls.client_rejected_certificate""#
            }
        }
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
    /// The URL in parts; `url.full` is put together while encoding, not built per request.
    /// `urlDomain` set means a URL is recorded. No scheme: a CONNECT target (`host:port`).
    public var urlScheme: URLScheme?
    public var urlDomain: String?
    /// Written into `url.full` when set: not the scheme's default port (always for CONNECT).
    public var urlPort: UInt16?
    public var urlPath: String?
    /// Already redacted.
    public var urlQuery: String?
    /// Heads as parsed; written with secret values redacted.
    public var requestHeaders: Headers?
    public var responseHeaders: Headers?
    public var httpVersion: HTTPVersion?
    public var method: String?
    public var requestBodyBytes: Int?
    public var statusCode: Int?
    public var responseBodyBytes: Int?
    public var networkProtocol: NetworkProtocol
    public var agent: String
    public var mode: Mode
    public var upstreamReused: Bool?
    /// TLS as seen by the agent: `1.3`, cipher, SNI, whether the handshake completed, and what
    /// Tollgate did with it (`intercepted`, `spliced`, `failed`).
    public var tlsVersion: String?
    public var tlsCipher: String?
    public var tlsServerName: String?
    public var tlsEstablished: Bool?
    public var tlsHandling: TLSHandling?
    /// The policy's verdict, the rule and its file, and why.
    public var decision: Decision.Verdict?
    public var ruleName: String?
    public var ruleset: String?
    public var reason: String?
    public var errorType: String?
    public var errorMessage: String?

    public init(start: Int64, action: Action, source: SocketAddress, networkProtocol: NetworkProtocol, agent: String, mode: Mode) {
        timestampMilliseconds = start
        self.action = action
        sourceIP = source.ip
        sourcePort = source.port
        self.networkProtocol = networkProtocol
        self.agent = agent
        self.mode = mode
    }

    /// What a record taken by the log pipeline leaves behind. Built afresh, not copied from a
    /// stored constant: the copy went through the type's outlined copy, a call per field.
    static var taken: FlowRecord {
        FlowRecord(start: 0, action: .rejected, source: SocketAddress(ip: .unspecifiedV4, port: 0),
                   networkProtocol: .tcp, agent: "", mode: .transparent)
    }

    public enum URLScheme: Sendable {
        case http, https
    }

    // Fields with a fixed set of values are enums, written as constant JSON literals: as
    // Strings, each cost a retain, a release and an escape scan per record.

    /// `network.protocol`.
    public enum NetworkProtocol: Sendable {
        case http, websocket, tls, tcp

        var json: StaticString {
            switch self {
            case .http: #""http""#
            case .websocket: #""websocket""#
            case .tls: #""tls""#
            case .tcp: #""tcp""#
            }
        }
    }

    /// `tollgate.mode`: how the agent reached Tollgate.
    public enum Mode: Sendable {
        case transparent, explicit

        var json: StaticString {
            switch self {
            case .transparent: #""transparent""#
            case .explicit: #""explicit""#
            }
        }
    }

    /// `http.version`.
    public enum HTTPVersion: Sendable {
        case http1_0, http1_1

        var json: StaticString {
            switch self {
            case .http1_0: #""1.0""#
            case .http1_1: #""1.1""#
            }
        }
    }

    /// `tollgate.tls`: what Tollgate did with the agent's TLS.
    public enum TLSHandling: Sendable {
        case intercepted, spliced, failed

        var json: StaticString {
            switch self {
            case .intercepted: #""intercepted""#
            case .spliced: #""spliced""#
            case .failed: #""failed""#
            }
        }
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
    /// Straight-line writer calls, no closures: a closure capturing the record copied it,
    /// retaining every field, which cost more than the encoding itself. `mutating` changes
    /// nothing: it lets a record be encoded where it lies, in an array, which a non-mutating call
    /// on an element does not (it copies the element, retaining every field, or must move it out).
    public mutating func encode(into out: inout JSONWriter, id: RecordID, observer: Observer, redaction: Redaction) {
        out.beginObject()
        out.key("@timestamp"); out.timestamp(milliseconds: timestampMilliseconds)
        out.beginObject("event")
        out.key("id"); id.write(into: &out)
        // Constant values as literals: no String to pass, retain or scan for escapes.
        out.key("kind"); out.literal(#""event""#)
        out.key("category")
        if method != nil { out.literal(#"["network","web"]"#) } else { out.literal(#"["network"]"#) }
        out.key("type")
        if decision == .deny || action == .rejected {
            out.literal(#"["denied"]"#)
        } else if method != nil {
            out.literal(#"["access"]"#)
        } else {
            out.literal(#"["connection"]"#)
        }
        out.field("action", literal: action.json)
        out.field("duration", Int(durationNanoseconds))
        out.key("outcome")
        if errorType == nil && decision != .deny { out.literal(#""success""#) } else { out.literal(#""failure""#) }
        out.field("reason", reason)
        out.endObject()
        out.beginObject("source")
        out.field("ip", sourceIP)
        out.field("port", Int(sourcePort))
        out.field("bytes", sourceBytes)
        out.endObject()
        if destinationIP != nil || destinationDomain != nil {
            out.beginObject("destination")
            out.field("ip", destinationIP)
            out.field("port", destinationPort.map(Int.init))
            out.field("domain", destinationDomain)
            out.field("bytes", destinationBytes)
            out.endObject()
        }
        out.key("observer")
        observer.encoded.withUnsafeBytes { out.rawJSON($0) }
        if let urlDomain {
            out.beginObject("url")
            out.key("full")
            writeFullURL(domain: urlDomain, into: &out)
            out.field("domain", urlDomain)
            out.field("path", urlPath)
            out.field("query", urlQuery)
            out.endObject()
        }
        if method != nil || statusCode != nil {
            out.beginObject("http")
            out.field("version", literal: httpVersion?.json)
            if method != nil || requestBodyBytes != nil {
                out.beginObject("request")
                out.field("method", method)
                out.beginObject("body"); out.field("bytes", requestBodyBytes ?? 0); out.endObject()
                if let requestHeaders { out.key("headers"); redaction.write(requestHeaders, into: &out) }
                out.endObject()
            }
            if let statusCode {
                out.beginObject("response")
                out.field("status_code", statusCode)
                out.beginObject("body"); out.field("bytes", responseBodyBytes ?? 0); out.endObject()
                if let responseHeaders { out.key("headers"); redaction.write(responseHeaders, into: &out) }
                out.endObject()
            }
            out.endObject()
        }
        // `user_agent.original` straight from the request head: no String per request.
        if let requestHeaders, let agentField = requestHeaders.fields.first(where: { $0.known == .userAgent }) {
            out.beginObject("user_agent")
            out.key("original")
            requestHeaders.withUnsafeBytes { out.stringValue(UnsafeRawBufferPointer(rebasing: $0[agentField.valueRange])) }
            out.endObject()
        }
        out.beginObject("network")
        out.field("protocol", literal: networkProtocol.json)
        out.key("transport"); out.literal(#""tcp""#)
        out.endObject()
        if ruleName != nil {
            out.beginObject("rule")
            out.field("name", ruleName)
            out.field("ruleset", ruleset)
            out.endObject()
        }
        if tlsHandling != nil {
            out.beginObject("tls")
            out.field("version", tlsVersion)
            out.field("version_protocol", tlsVersion == nil ? nil : "tls")
            out.field("cipher", tlsCipher)
            out.field("established", tlsEstablished)
            if let tlsServerName { out.beginObject("client"); out.field("server_name", tlsServerName); out.endObject() }
            out.endObject()
        }
        out.beginObject("tollgate")
        out.field("agent", agent)
        out.field("mode", literal: mode.json)
        out.field("tls", literal: tlsHandling?.json)
        out.field("decision", literal: decision?.json)
        out.field("upstream_reused", upstreamReused)
        out.endObject()
        if let errorType {
            out.beginObject("error")
            out.field("type", errorType)
            out.field("message", errorMessage)
            out.endObject()
        }
        out.endObject()
        out.newline()
    }

    /// `scheme://host[:port]path[?query]`, IPv6 literals in brackets; `host:port` for CONNECT.
    private func writeFullURL(domain: String, into out: inout JSONWriter) {
        out.openString()
        switch urlScheme {
        case .http: out.appendLiteral("http://")
        case .https: out.appendLiteral("https://")
        case nil: break
        }
        var domain = domain
        domain.withUTF8 { bytes in
            let bracketed = bytes.contains(UInt8(ascii: ":"))  // an IPv6 literal
            if bracketed { out.appendLiteral("[") }
            out.appendEscaped(UnsafeRawBufferPointer(bytes))
            if bracketed { out.appendLiteral("]") }
        }
        if let urlPort {
            out.appendLiteral(":")
            out.appendDecimal(Int(urlPort))
        }
        if let urlPath { out.appendEscaped(urlPath) }
        if let urlQuery {
            out.appendLiteral("?")
            out.appendEscaped(urlQuery)
        }
        out.closeString()
    }
}

extension Decision.Verdict {
    /// `tollgate.decision`.
    var json: StaticString {
        switch self {
        case .allow: #""allow""#
        case .deny: #""deny""#
        case .splice: #""splice""#
        case .report: #""report""#
        }
    }
}
