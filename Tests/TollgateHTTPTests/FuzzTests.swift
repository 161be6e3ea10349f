import Testing
@testable import TollgateHTTP

/// A tiny deterministic generator so every run mutates the same way.
private struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

@Suite struct FuzzTests {
    /// Seeded random mutations of real heads and bodies: parsers must answer (head, need more,
    /// or a typed error) and never trap, whatever the bytes.
    @Test func parsersSurviveRandomMutations() {
        let seeds: [[UInt8]] = [
            Array("POST /upload?x=1 HTTP/1.1\r\nHost: a.example\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n5;e=1\r\nhello\r\n0\r\nT: v\r\n\r\n".utf8),
            Array("GET http://a.example:8080/p HTTP/1.0\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc".utf8),
            Array("HTTP/1.1 200 OK\r\nContent-Length: 4\r\nSet-Cookie: a=b\r\n\r\nbody".utf8),
        ]
        var random = SplitMix(state: 0x5eed_1234)
        var outcomes = (heads: 0, incomplete: 0, errors: 0)
        for iteration in 0..<30_000 {
            var bytes = seeds[iteration % seeds.count]
            for _ in 0..<(1 + Int(random.next() % 6)) {
                let position = Int(random.next() % UInt64(bytes.count))
                switch random.next() % 4 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: random.next())
                case 1: bytes.remove(at: position)
                case 2: bytes.insert([0x0D, 0x0A, 0x20, 0x3A, 0x00, UInt8(ascii: "0")][Int(random.next() % 6)], at: position)
                default: bytes = Array(bytes[0..<position])
                }
                if bytes.isEmpty { bytes = [0x47] }
            }
            let isResponse = iteration % seeds.count == 2
            let result: Result<Int?, HTTPError> = bytes.withUnsafeBytes { raw in
                do throws(HTTPError) {
                    var scanner = HeadScanner()
                    guard let length = try scanner.scan(raw, limits: HeadLimits(), isRequest: !isResponse) else { return .success(nil) }
                    let framing: BodyFraming
                    if isResponse {
                        framing = try HeadParser.parseResponse(raw, length: length, limits: HeadLimits(), requestIsHead: false).framing
                    } else {
                        framing = try HeadParser.parseRequest(raw, length: length, limits: HeadLimits()).framing
                    }
                    var decoder = BodyDecoder(framing: framing)
                    var offset = length
                    while offset < raw.count {
                        switch try decoder.next(UnsafeRawBufferPointer(rebasing: raw[offset...])) {
                        case .data(_, _, let consumed), .needMore(let consumed), .end(let consumed):
                            if consumed == 0 { return .success(length) }
                            offset += consumed
                        }
                    }
                    return .success(length)
                } catch { return .failure(error) }
            }
            switch result {
            case .success(.some): outcomes.heads += 1
            case .success(.none): outcomes.incomplete += 1
            case .failure: outcomes.errors += 1
            }
        }
        #expect(outcomes.heads > 0 && outcomes.incomplete > 0 && outcomes.errors > 0)
    }
}
