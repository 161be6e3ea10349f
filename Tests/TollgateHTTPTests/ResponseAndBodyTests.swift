import Testing
@testable import TollgateHTTP

func parseResponse(_ text: String, head: Bool = false) throws(HTTPError) -> ResponseHead {
    let bytes = Array(text.utf8)
    let result: Result<ResponseHead, HTTPError> = bytes.withUnsafeBytes { raw in
        do throws(HTTPError) {
            var scanner = HeadScanner()
            let length = try scanner.scan(raw, limits: HeadLimits(), isRequest: false)!
            return .success(try HeadParser.parseResponse(raw, length: length, limits: HeadLimits(), requestIsHead: head))
        } catch { return .failure(error) }
    }
    return try result.get()
}

/// Feeds `input` to a decoder in pieces of `split` bytes and returns the body and leftover bytes.
func decode(_ input: String, framing: BodyFraming, split: Int = 1000) throws(HTTPError) -> (body: String, complete: Bool, rest: String) {
    var decoder = BodyDecoder(framing: framing)
    var pending: [UInt8] = []
    var body: [UInt8] = []
    let bytes = Array(input.utf8)
    var index = 0
    while index < bytes.count && !decoder.isComplete {
        let end = min(index + split, bytes.count)
        pending += bytes[index..<end]
        index = end
        loop: while true {
            let result: Result<BodyStep, HTTPError> = pending.withUnsafeBytes { raw in
                do throws(HTTPError) { return .success(try decoder.next(raw)) } catch { return .failure(error) }
            }
            let step = try result.get()
            switch step {
            case .data(let offset, let count, let consumed):
                body += pending[offset..<(offset + count)]
                pending.removeFirst(consumed)
            case .needMore(let consumed):
                pending.removeFirst(consumed)
                break loop
            case .end(let consumed):
                pending.removeFirst(consumed)
                break loop
            }
        }
    }
    return (String(decoding: body, as: UTF8.self), decoder.isComplete, String(decoding: pending + bytes[index...], as: UTF8.self))
}

@Suite struct ResponseAndBodyTests {
    @Test func responseFramingFollowsMethodAndStatus() throws {
        #expect(try parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").framing == .length(3))
        #expect(try parseResponse("HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", head: true).framing == .none)
        #expect(try parseResponse("HTTP/1.1 204 No Content\r\n\r\n").framing == .none)
        #expect(try parseResponse("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n").framing == .none)
        #expect(try parseResponse("HTTP/1.1 100 Continue\r\n\r\n").isInformational)
        #expect(try parseResponse("HTTP/1.1 200 OK\r\n\r\n").framing == .untilClose)
        #expect(try parseResponse("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").framing == .chunked)
        #expect(try parseResponse("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n").keepAlive == false)
        #expect(try parseResponse("HTTP/1.1 200\r\nContent-Length: 1\r\n\r\n").status == 200)
    }

    @Test func rejectsMalformedStatusLines() {
        #expect(throws: HTTPError.badStatusLine) { try parseResponse("HTTP/1.1 2x0 OK\r\n\r\n") }
        #expect(throws: HTTPError.badStatusLine) { try parseResponse("HTTX/1.1 200 OK\r\n\r\n") }
    }

    @Test func decodesChunkedBodiesSplitAnywhere() throws {
        let wire = "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT"
        for split in [1, 2, 3, 7, 1000] {
            let result = try decode(wire, framing: .chunked, split: split)
            #expect(result.body == "hello world")
            #expect(result.complete)
            #expect(result.rest == "NEXT")
        }
    }

    @Test func decodesContentLengthAndStopsAtTheEnd() throws {
        let result = try decode("abcdefGET", framing: .length(6), split: 4)
        #expect(result.body == "abcdef")
        #expect(result.complete)
        #expect(result.rest == "GET")
    }

    @Test func rejectsBadChunkFraming() {
        #expect(throws: HTTPError.invalidChunkSize) { try decode("zz\r\nabc\r\n0\r\n\r\n", framing: .chunked) }
        #expect(throws: HTTPError.invalidChunkSize) { try decode("\r\n", framing: .chunked) }
        #expect(throws: HTTPError.invalidChunkSize) { try decode("5 \r\nhello\r\n0\r\n\r\n", framing: .chunked) }
        #expect(throws: HTTPError.invalidChunkSize) { try decode("1000000000000000\r\n", framing: .chunked) }
        #expect(throws: HTTPError.invalidChunkFraming) { try decode("5\r\nhelloXX0\r\n\r\n", framing: .chunked) }
        #expect(throws: HTTPError.invalidChunkFraming) { try decode("5\r\rhello\r\n", framing: .chunked) }
    }
}
