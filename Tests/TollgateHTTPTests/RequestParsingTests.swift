import Testing
@testable import TollgateHTTP

/// Parses `text` as a request head the way a session does: scan for the end, then parse.
func parseRequest(_ text: String, limits: HeadLimits = HeadLimits()) throws(HTTPError) -> RequestHead? {
    let bytes = Array(text.utf8)
    var scanner = HeadScanner()
    let result: Result<RequestHead?, HTTPError> = bytes.withUnsafeBytes { raw in
        do throws(HTTPError) {
            guard let length = try scanner.scan(raw, limits: limits, isRequest: true) else { return .success(nil) }
            return .success(try HeadParser.parseRequest(raw, length: length, limits: limits))
        } catch { return .failure(error) }
    }
    return try result.get()
}

func rejection(_ text: String, limits: HeadLimits = HeadLimits()) -> HTTPError? {
    do { _ = try parseRequest(text, limits: limits); return nil } catch { return error }
}

@Suite struct RequestParsingTests {
    /// The shim reads a field's four offsets as a `tg_header_span` at the start of each element.
    @Test func headerFieldsStartWithTheirOffsetsInSpanOrder() {
        #expect(MemoryLayout<HeaderField>.offset(of: \.nameStart) == 0)
        #expect(MemoryLayout<HeaderField>.offset(of: \.nameCount) == 4)
        #expect(MemoryLayout<HeaderField>.offset(of: \.valueStart) == 8)
        #expect(MemoryLayout<HeaderField>.offset(of: \.valueCount) == 12)
    }

    @Test func parsesASimpleGet() throws {
        let head = try #require(try parseRequest("GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n"))
        #expect(head.method == "GET")
        #expect(head.target == "/a?b=1")
        #expect(head.minorVersion == 1)
        #expect(head.keepAlive)
        #expect(head.framing == .none)
        #expect(head.headers.first(.host) == "example.com")
        #expect(head.headers.first(named: "user-agent") == "t")
    }

    @Test func waitsForTheEndOfTheHead() throws {
        #expect(try parseRequest("GET / HTTP/1.1\r\nHost: a\r\n") == nil)
    }

    @Test func recognisesBodyFraming() throws {
        #expect(try parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")?.framing == .length(5))
        #expect(try parseRequest("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")?.framing == .chunked)
        #expect(try parseRequest("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\n")?.framing == .length(5))
    }

    @Test func honoursConnectionSemantics() throws {
        #expect(try parseRequest("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")?.keepAlive == false)
        #expect(try parseRequest("GET / HTTP/1.0\r\n\r\n")?.keepAlive == false)
        #expect(try parseRequest("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")?.keepAlive == true)
        let upgrade = try parseRequest("GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
        #expect(upgrade?.upgrade == "websocket")
        #expect(try parseRequest("PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")?.expectsContinue == true)
    }

    @Test func rejectsSmugglingAmbiguities() {
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n") == .contentLengthAndTransferEncoding)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n") == .conflictingContentLength)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\n") == .conflictingContentLength)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n") == .invalidContentLength)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(rejection("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n") == .unsupportedTransferEncoding)
        #expect(rejection("GET / HTTP/1.1\r\nHost : a\r\n\r\n") == .whitespaceBeforeColon)
        #expect(rejection("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n") == .obsoleteLineFolding)
        #expect(rejection("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\u{0}c\r\n\r\n") == .invalidHeaderValue)
        #expect(rejection("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\rc\r\n\r\n") == .invalidHeaderValue)
        #expect(rejection("GET / HTTP/1.1\nHost: a\r\n\r\n") == .bareLineFeed)
        #expect(rejection("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n") == .missingHost)
        #expect(rejection("GET / HTTP/1.1\r\n\r\n") == .missingHost)
        #expect(rejection("G@T / HTTP/1.1\r\nHost: a\r\n\r\n") == .badRequestLine)
        #expect(rejection("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n") == .badRequestLine)
        #expect(rejection("GET / HTTP/2.0\r\nHost: a\r\n\r\n") == .unsupportedVersion)
    }

    @Test func enforcesLimitsWithTheirStatuses() {
        let limits = HeadLimits(requestLineBytes: 64, headerBytes: 256, headerCount: 3)
        let longLine = "GET /" + String(repeating: "a", count: 100) + " HTTP/1.1\r\nHost: a\r\n\r\n"
        #expect(rejection(longLine, limits: limits)?.status == 414)
        let partialLongLine = "GET /" + String(repeating: "a", count: 100)
        #expect(rejection(partialLongLine, limits: limits)?.status == 414)
        let bigHeader = "GET / HTTP/1.1\r\nHost: a\r\nX: " + String(repeating: "b", count: 300) + "\r\n\r\n"
        #expect(rejection(bigHeader, limits: limits)?.status == 431)
        let many = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        #expect(rejection(many, limits: limits) == .tooManyHeaders)
        #expect(HTTPError.tooManyHeaders.status == 431)
    }

    @Test func scansHeadsArrivingByteByByte() throws {
        let text = Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        var scanner = HeadScanner()
        var found: Int?
        for end in 1...text.count {
            found = try Array(text[0..<end]).withUnsafeBytes { (raw) throws(HTTPError) in try scanner.scan(raw, limits: HeadLimits(), isRequest: true) }
            if found != nil { #expect(end == text.count) }
        }
        #expect(found == text.count)
    }

    @Test func headerNamesAcceptExactlyTheTokenCharacters() {
        let tchar = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        for byte in 0...255 { #expect(isTokenChar(UInt8(byte)) == tchar.contains(UInt8(byte)), "byte \(byte)") }
    }

    /// Values are checked eight bytes at a time: a control byte must be found at every offset
    /// of every length, tabs and obs-text pass, and trailing blanks are trimmed.
    @Test func headerValuesAreCheckedAtEveryPosition() throws {
        for length in 1...20 {
            for position in 0..<length {
                for bad: UInt8 in [0x00, 0x01, 0x0B, 0x1F, 0x7F] {
                    var value = Array(repeating: UInt8(ascii: "v"), count: length)
                    value[position] = bad
                    let head = Array("GET / HTTP/1.1\r\nHost: a\r\nX: ".utf8) + value + Array("\r\n\r\n".utf8)
                    #expect(rejection(String(decoding: head, as: UTF8.self)) == .invalidHeaderValue, "length \(length) at \(position): \(bad)")
                }
            }
            let value = String(repeating: "v\t\u{e9}", count: length) + String(repeating: " \t", count: length % 3)
            let head = try #require(try parseRequest("GET / HTTP/1.1\r\nHost: a\r\nX: \(value)\r\n\r\n"))
            #expect(head.headers.first(named: "x") == String(repeating: "v\t\u{e9}", count: length))
        }
    }
}
