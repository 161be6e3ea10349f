import Foundation
import Testing
import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateShipping
@testable import TollgateProxy

@Suite struct FlowRecordTests {
    @Test func encodesNestedECSFieldsAsOneLine() {
        var record = FlowRecord(start: 1_764_000_000_123, action: .httpRequest,
                                source: SocketAddress(parsing: "10.99.0.2:40000")!, networkProtocol: .http,
                                agent: "worker-1", mode: .transparent)
        record.method = "GET"
        record.statusCode = 200
        record.responseBodyBytes = 1024
        record.requestBodyBytes = 0
        record.urlScheme = .http
        record.urlDomain = "203.0.113.10"
        record.urlPath = "/1k"
        record.errorMessage = "quote \" and\nnewline"
        record.errorType = "x"
        var writer = JSONWriter()
        record.encode(into: &writer, id: RecordID(prefix: 0x0123456789abcdef, counter: 0x0123456789abcdef),
                      observer: FlowRecord.Observer(hostname: "gw", version: "0.1.0"), redaction: Redaction(extraHeaders: []))
        let line = String(decoding: writer.bytes, as: UTF8.self)
        #expect(line.hasPrefix("{\"@timestamp\":\"2025-11-24T16:00:00.123Z\",\"event\":{\"id\":\"0123456789abcdef0123456789abcdef\",\"kind\":\"event\",\"category\":[\"network\",\"web\"],\"type\":[\"access\"],\"action\":\"http_request\""))
        #expect(line.contains("\"observer\":{\"type\":\"proxy\",\"product\":\"tollgate\",\"vendor\":\"tollgate\",\"version\":\"0.1.0\",\"hostname\":\"gw\"}"))
        #expect(line.contains("\"source\":{\"ip\":\"10.99.0.2\",\"port\":40000}"))
        #expect(line.contains("\"url\":{\"full\":\"http://203.0.113.10/1k\",\"domain\":\"203.0.113.10\",\"path\":\"/1k\"}"))
        #expect(line.contains("\"http\":{\"request\":{\"method\":\"GET\",\"body\":{\"bytes\":0}},\"response\":{\"status_code\":200,\"body\":{\"bytes\":1024}}}"))
        #expect(line.contains("\"tollgate\":{\"agent\":\"worker-1\",\"mode\":\"transparent\"}"))
        #expect(line.contains("\"message\":\"quote \\\" and\\nnewline\""))
        #expect(line.hasSuffix("}\n"))
        #expect(line.filter { $0 == "\n" }.count == 1)
    }

    /// Fields with a fixed set of values are written from constant literals: each value is
    /// its name, and every line stays valid JSON.
    @Test func writesEveryFixedValueByName() throws {
        func encoded(_ change: (inout FlowRecord) -> Void) throws -> [String: Any] {
            var record = FlowRecord(start: 0, action: .httpRequest, source: SocketAddress(parsing: "10.99.0.2:40000")!,
                                    networkProtocol: .http, agent: "a", mode: .explicit)
            record.method = "GET"
            record.statusCode = 200
            change(&record)
            var writer = JSONWriter()
            record.encode(into: &writer, id: RecordID(prefix: 1, counter: 2), observer: FlowRecord.Observer(hostname: "gw", version: "0"),
                          redaction: Redaction(extraHeaders: []))
            return try #require(JSONSerialization.jsonObject(with: Data(writer.bytes)) as? [String: Any])
        }
        func value(_ document: [String: Any], _ path: String) -> String? {
            var node: Any? = document
            for part in path.split(separator: ".") { node = (node as? [String: Any])?[String(part)] }
            return node as? String
        }
        let actions: [(FlowRecord.Action, String)] = [(.httpRequest, "http_request"), (.tunnel, "tunnel"), (.tcpRelay, "tcp_relay"),
                                                       (.rejected, "rejected"), (.tlsFailed, "tls_failed"),
                                                       (.tlsClientRejectedCertificate, "tls.client_rejected_certificate")]
        for (given, name) in actions { #expect(value(try encoded { $0.action = given }, "event.action") == name) }
        let protocols: [(FlowRecord.NetworkProtocol, String)] = [(.http, "http"), (.websocket, "websocket"), (.tls, "tls"), (.tcp, "tcp")]
        for (given, name) in protocols { #expect(value(try encoded { $0.networkProtocol = given }, "network.protocol") == name) }
        let modes: [(FlowRecord.Mode, String)] = [(.transparent, "transparent"), (.explicit, "explicit")]
        for (given, name) in modes { #expect(value(try encoded { $0.mode = given }, "tollgate.mode") == name) }
        let versions: [(FlowRecord.HTTPVersion, String)] = [(.http1_0, "1.0"), (.http1_1, "1.1")]
        for (given, name) in versions { #expect(value(try encoded { $0.httpVersion = given }, "http.version") == name) }
        let handlings: [(FlowRecord.TLSHandling, String)] = [(.intercepted, "intercepted"), (.spliced, "spliced"), (.failed, "failed")]
        for (given, name) in handlings { #expect(value(try encoded { $0.tlsHandling = given }, "tollgate.tls") == name) }
        let verdicts: [(Decision.Verdict, String)] = [(.allow, "allow"), (.deny, "deny"), (.splice, "splice"), (.report, "report")]
        for (given, name) in verdicts { #expect(value(try encoded { $0.decision = given }, "tollgate.decision") == name) }
        #expect(value(try encoded { $0.decision = .deny }, "event.outcome") == "failure")
        #expect(value(try encoded { $0.decision = .allow }, "event.outcome") == "success")
    }

    /// `url.full` is put together from its parts while encoding.
    @Test func writesTheFullURLFromItsParts() {
        func full(_ scheme: FlowRecord.URLScheme?, _ domain: String, _ port: UInt16?, _ path: String?, _ query: String?) -> String {
            var record = FlowRecord(start: 0, action: .httpRequest, source: SocketAddress(parsing: "10.99.0.2:40000")!,
                                    networkProtocol: .http, agent: "a", mode: .explicit)
            record.urlScheme = scheme
            record.urlDomain = domain
            record.urlPort = port
            record.urlPath = path
            record.urlQuery = query
            var writer = JSONWriter()
            record.encode(into: &writer, id: RecordID(prefix: 1, counter: 1), observer: FlowRecord.Observer(hostname: "gw", version: "0"),
                          redaction: Redaction(extraHeaders: []))
            let line = String(decoding: writer.bytes, as: UTF8.self)
            guard let start = line.range(of: "\"full\":\"")?.upperBound, let end = line[start...].firstIndex(of: ",") else { return line }
            return String(line[start..<line.index(before: end)])
        }
        #expect(full(.http, "example.com", nil, "/a", nil) == "http://example.com/a")
        #expect(full(.https, "example.com", 8443, "/a", "k=[redacted]&b=1") == "https://example.com:8443/a?k=[redacted]&b=1")
        #expect(full(.http, "2001:db8::1", 8080, "/", nil) == "http://[2001:db8::1]:8080/")
        #expect(full(nil, "example.com", 443, nil, nil) == "example.com:443")
        #expect(full(.http, "example.com", nil, "/\"q\"", nil) == "http://example.com/\\\"q\\\"")
    }

    @Test func civilDatesAreCorrect() {
        #expect(civilDate(daysSinceEpoch: 0) == (1970, 1, 1))
        #expect(civilDate(daysSinceEpoch: 11016) == (2000, 2, 29))
        #expect(civilDate(daysSinceEpoch: 20417) == (2025, 11, 25))
    }

    @Test func parsesRequestTargets() {
        #expect(RequestTarget.parseAbsolute("http://Example.com:8080/a?b") == RequestTarget(host: "example.com", port: 8080, path: "/a?b"))
        #expect(RequestTarget.parseAbsolute("http://[::1]/") == RequestTarget(host: "::1", port: 80, path: "/"))
        #expect(RequestTarget.parseAbsolute("http://a.b") == RequestTarget(host: "a.b", port: 80, path: "/"))
        #expect(RequestTarget.parseAbsolute("https://a.b/") == nil)
        #expect(RequestTarget.parseAbsolute("http://user@a.b/") == nil)
        #expect(RequestTarget.parseAuthority("a.b:443", defaultPort: nil)! == ("a.b", 443))
        #expect(RequestTarget.parseAuthority("a.b", defaultPort: nil) == nil)
        #expect(RequestTarget.parseAuthority("A.b", defaultPort: 80)! == ("a.b", 80))
        #expect(RequestTarget.parseAuthority("[2001:DB8::1]:8080", defaultPort: nil)! == ("2001:db8::1", 8080))
        #expect(RequestTarget.parseAuthority("[::1]", defaultPort: 443)! == ("::1", 443))
        for bad in ["[::1]x", "[::1", "a.b:", "a.b:65536", "a.b:0", ":80", "a b:80", "u@a.b:80", "a.b:8x", ""] {
            #expect(RequestTarget.parseAuthority(bad, defaultPort: 80) == nil, "\(bad)")
        }
    }

    @Test func sniffsProtocols() {
        func sniff(_ bytes: [UInt8]) -> SniffedProtocol { bytes.withUnsafeBytes { SniffedProtocol.classify($0) } }
        #expect(sniff([0x16, 0x03, 0x01]) == .tls)
        #expect(sniff(Array("GET / HTTP/1.1".utf8)) == .http)
        #expect(sniff(Array("GE".utf8)) == .undecided)
        #expect(sniff(Array("SSH-2.0-OpenSSH".utf8)) == .other)
        #expect(sniff([]) == .undecided)
    }
}

@Suite struct RedactionTests {
    @Test func secretQueryParametersAreRedacted() {
        #expect(Redaction.query("api_key=abc&page=2&AccessToken=x&q=hello") == "api_key=[redacted]&page=2&AccessToken=[redacted]&q=hello")
        #expect(Redaction.query("flag&password=hunter2") == "flag&password=[redacted]")
    }

    @Test func secretHeadersAreRedactedAndRepeatsJoined() throws {
        // X-Cusxom: as long as X-Custom, another name.
        let text = "GET / HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cr3t\r\nX-Custom: 1\r\nX-Cusxom: 9\r\nx-CUSTOM: 2\r\nX-Mine: hidden\r\n\r\n"
        let head = try parseRequestHead(text)
        var writer = JSONWriter()
        Redaction(extraHeaders: ["X-Mine"]).write(head.headers, into: &writer)
        #expect(String(decoding: writer.bytes, as: UTF8.self)
                == "{\"host\":\"a\",\"authorization\":\"[redacted]\",\"x-custom\":\"1, 2\",\"x-cusxom\":\"9\",\"x-mine\":\"[redacted]\"}")
    }

    /// Every built-in secret name, in any case, is redacted; names that look like one (same
    /// length, same first bytes) are not.
    @Test func everySecretNameInAnyCaseAndNoLookalike() throws {
        let secrets = ["AUTHORIZATION", "Proxy-Authorization", "cookie", "Set-Cookie", "x-VAULT-token", "X-Api-Key", "API-KEY"]
        let lookalikes = ["Authorizatiom", "Cookies", "Cookie2", "Set-Cookie2", "X-Api-Kex", "Api-Keys", "Server"]
        let text = "GET / HTTP/1.1\r\nHost: a\r\n" + (secrets + lookalikes).map { "\($0): v-\($0)\r\n" }.joined() + "\r\n"
        let head = try parseRequestHead(text)
        var writer = JSONWriter()
        Redaction(extraHeaders: []).write(head.headers, into: &writer)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(writer.bytes)) as? [String: String])
        for name in secrets { #expect(object[name.lowercased()] == "[redacted]", "\(name)") }
        for name in lookalikes { #expect(object[name.lowercased()] == "v-\(name)", "\(name)") }
    }

    /// Header names of every length, with every token character: lower-cased exactly; values
    /// with quotes, backslashes, tabs and non-ASCII bytes escaped.
    @Test func lowercasesNamesOfEveryLengthAndEscapesValues() throws {
        let tokenCharacters = Array("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)
        let value = "a \"quoted\" \\ value\twith é"
        for length in 1...40 {
            let name = String(decoding: (0..<length).map { tokenCharacters[($0 * 7 + length) % tokenCharacters.count] }, as: UTF8.self)
            let head = try parseRequestHead("GET / HTTP/1.1\r\nHost: a\r\n\(name): \(value)\r\n\r\n")
            var writer = JSONWriter(capacity: 8)
            Redaction(extraHeaders: []).write(head.headers, into: &writer)
            let object = try #require(try JSONSerialization.jsonObject(with: Data(writer.bytes)) as? [String: String])
            #expect(object == ["host": "a", name.lowercased(): value], "\(name)")
        }
    }

    /// Many fields, names repeated in any case and secret ones among them, against a plain
    /// model: first occurrences in order, later values joined with ", ", secrets replaced once.
    @Test func repeatsAndSecretsAmongManyFieldsMatchAModel() throws {
        var fields = [("Host", "a")]
        for index in 1..<99 {  // the parser's default limit is 100 fields
            let name = switch index % 7 {
            case 0: "Cookie"
            case 1: "X-Repeated"
            case 2: index % 2 == 0 ? "x-REPEATED" : "X-Mine"
            default: "X-Field-\(index)"
            }
            fields.append((name, "v\(index)"))
        }
        let head = try parseRequestHead("GET / HTTP/1.1\r\n" + fields.map { "\($0): \($1)\r\n" }.joined() + "\r\n")
        var expected: [(String, String)] = []
        for (name, value) in fields {
            let key = name.lowercased()
            if let at = expected.firstIndex(where: { $0.0 == key }) {
                if !["cookie", "x-mine"].contains(key) { expected[at].1 += ", " + value }
            } else {
                expected.append((key, ["cookie", "x-mine"].contains(key) ? "[redacted]" : value))
            }
        }
        var writer = JSONWriter()
        Redaction(extraHeaders: ["X-MINE"]).write(head.headers, into: &writer)
        let json = expected.map { "\"\($0.0)\":\"\($0.1)\"" }.joined(separator: ",")
        #expect(String(decoding: writer.bytes, as: UTF8.self) == "{" + json + "}")
    }

    /// Only letters fold: `^` and `~` (0x5E and 0x7E) are different token characters.
    @Test func namesDifferingOnlyInLetterCaseAreOneName() throws {
        let head = try parseRequestHead("GET / HTTP/1.1\r\nHost: a\r\nX-A^b: 1\r\nX-A~b: 2\r\nX-a^B: 3\r\n\r\n")
        var writer = JSONWriter()
        Redaction(extraHeaders: ["X-A~b"]).write(head.headers, into: &writer)
        #expect(String(decoding: writer.bytes, as: UTF8.self) == #"{"host":"a","x-a^b":"1, 3","x-a~b":"[redacted]"}"#)
    }

    @Test func userAgentComesFromTheRequestHead() throws {
        var record = FlowRecord(start: 0, action: .httpRequest, source: SocketAddress(parsing: "10.99.0.2:40000")!,
                                networkProtocol: .http, agent: "a", mode: .explicit)
        record.method = "GET"
        record.requestHeaders = try parseRequestHead("GET / HTTP/1.1\r\nHost: a\r\nUser-Agent: curl/8.1 \"x\"\r\n\r\n").headers
        var writer = JSONWriter()
        record.encode(into: &writer, id: RecordID(prefix: 1, counter: 1), observer: FlowRecord.Observer(hostname: "gw", version: "0"),
                      redaction: Redaction(extraHeaders: []))
        #expect(String(decoding: writer.bytes, as: UTF8.self).contains("\"user_agent\":{\"original\":\"curl/8.1 \\\"x\\\"\"}"))
    }
}

/// A request head parsed from text (tests only).
private func parseRequestHead(_ text: String) throws -> RequestHead {
    let bytes = Array(text.utf8)
    return try bytes.withUnsafeBytes { raw in try HeadParser.parseRequest(raw, length: raw.count, limits: HeadLimits()) }
}
