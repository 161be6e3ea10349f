import Testing
@testable import TollgateHTTP

@Suite struct HeadWriterTests {
    @Test func dropsHopByHopFieldsAndAddsVia() throws {
        let head = try #require(try parseRequest(
            "POST http://a/x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\n"
            + "Proxy-Authorization: Basic x\r\nTE: trailers\r\nX-Kept: k\r\nContent-Length: 3\r\n\r\n"))
        var out: [UInt8] = []
        HeadWriter.writeRequest(head, target: "/x", addHost: nil, framing: head.framing, into: &out)
        let text = String(decoding: out, as: UTF8.self)
        #expect(text == "POST /x HTTP/1.1\r\nHost: a\r\nX-Kept: k\r\nContent-Length: 3\r\nVia: 1.1 tollgate\r\n\r\n")
    }

    @Test func rewritesChunkedFramingAndKeepsUpgrade() throws {
        let head = try #require(try parseRequest("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"))
        var out: [UInt8] = []
        HeadWriter.writeRequest(head, target: "/ws", addHost: nil, framing: .none, into: &out)
        #expect(String(decoding: out, as: UTF8.self) == "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nVia: 1.1 tollgate\r\n\r\n")
    }

    @Test func keepsContentLengthOfBodilessResponses() throws {
        let head = try parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 42\r\nConnection: keep-alive\r\n\r\n", head: true)
        var out: [UInt8] = []
        HeadWriter.writeResponse(head, framing: head.framing, close: false, upgrade: false, into: &out)
        #expect(String(decoding: out, as: UTF8.self) == "HTTP/1.1 200 OK\r\nContent-Length: 42\r\nVia: 1.1 tollgate\r\n\r\n")
    }

    @Test func reframesCloseDelimitedResponsesAsChunked() throws {
        let head = try parseResponse("HTTP/1.1 200 OK\r\nX: y\r\n\r\n")
        var out: [UInt8] = []
        HeadWriter.writeResponse(head, framing: .chunked, close: false, upgrade: false, into: &out)
        #expect(String(decoding: out, as: UTF8.self) == "HTTP/1.1 200 OK\r\nX: y\r\nTransfer-Encoding: chunked\r\nVia: 1.1 tollgate\r\n\r\n")
    }

    /// Lines received as `Name: value` are copied in runs; any other spacing is normalised, and
    /// dropped fields split the runs wherever they sit.
    @Test func copiesWellFormedLinesAndNormalisesTheRest() throws {
        let head = try parseResponse("HTTP/1.1 200 OK\r\nA: 1\r\nB:2\r\nC:   3  \r\nD: 4\r\nConnection: keep-alive, E\r\n"
            + "E: 5\r\nF: 6\r\nG: \r\nH:\t7\r\nContent-Length: 0\r\nI: x\ty\r\n\r\n")
        var out: [UInt8] = []
        HeadWriter.writeResponse(head, framing: head.framing, close: false, upgrade: false, into: &out)
        #expect(String(decoding: out, as: UTF8.self)
            == "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nF: 6\r\nG: \r\nH: 7\r\nContent-Length: 0\r\nI: x\ty\r\nVia: 1.1 tollgate\r\n\r\n")
    }
}
