import Testing
@testable import TollgateTLS

/// Builds a TLS 1.3-style ClientHello record with the given SNI and ALPN.
func clientHello(serverName: String?, alpn: [String] = ["h2", "http/1.1"], padding: Int = 0) -> [UInt8] {
    func u16(_ v: Int) -> [UInt8] { [UInt8(v >> 8 & 0xff), UInt8(v & 0xff)] }
    var extensions: [UInt8] = []
    if let serverName {
        let name = Array(serverName.utf8)
        let entry = [0] + u16(name.count) + name
        let list = u16(entry.count) + entry
        extensions += u16(0) + u16(list.count) + list
    }
    if !alpn.isEmpty {
        let entries = alpn.flatMap { [UInt8($0.utf8.count)] + Array($0.utf8) }
        let list = u16(entries.count) + entries
        extensions += u16(16) + u16(list.count) + list
    }
    let versions: [UInt8] = [4, 3, 4, 3, 3]
    extensions += u16(43) + u16(versions.count) + versions
    if padding > 0 { extensions += u16(21) + u16(padding) + [UInt8](repeating: 0, count: padding) }
    var body: [UInt8] = [3, 3] + [UInt8](repeating: 7, count: 32) + [32] + [UInt8](repeating: 1, count: 32)
    body += u16(4) + [0x13, 0x01, 0x13, 0x02] + [1, 0]
    body += u16(extensions.count) + extensions
    let handshake: [UInt8] = [1, 0] + u16(body.count) + body
    return [0x16, 3, 1] + u16(handshake.count) + handshake
}

func parse(_ bytes: [UInt8]) -> ClientHelloParse { bytes.withUnsafeBytes { ClientHelloParser.parse($0) } }

@Suite struct ClientHelloTests {
    @Test func readsServerNameALPNAndVersions() {
        let result = parse(clientHello(serverName: "Origin.Test."))
        #expect(result == .complete(ClientHello(serverName: "origin.test", alpn: ["h2", "http/1.1"], versions: [0x0304, 0x0303])))
    }

    @Test func helloWithoutSNIHasNoName() {
        guard case .complete(let hello) = parse(clientHello(serverName: nil, alpn: [])) else { Issue.record("not parsed"); return }
        #expect(hello.serverName == nil)
        #expect(hello.alpn.isEmpty)
    }

    @Test func waitsForEveryByteOfASplitHello() {
        let full = clientHello(serverName: "a.example", padding: 600)
        for cut in [1, 3, 5, 9, 100, full.count - 1] {
            #expect(parse(Array(full[0..<cut])) == .incomplete)
        }
        #expect(parse(full) != .incomplete)
    }

    @Test func reassemblesAHandshakeSpreadOverRecords() {
        let full = clientHello(serverName: "split.example", padding: 300)
        let handshake = Array(full[5...])
        var records: [UInt8] = []
        var offset = 0
        for size in [10, 200, handshake.count] where offset < handshake.count {
            let end = min(offset + size, handshake.count)
            let piece = Array(handshake[offset..<end])
            records += [0x16, 3, 3, UInt8(piece.count >> 8), UInt8(piece.count & 0xff)] + piece
            offset = end
        }
        guard case .complete(let hello) = parse(records) else { Issue.record("not reassembled"); return }
        #expect(hello.serverName == "split.example")
    }

    @Test func refusesGarbageAndOversizedHellos() {
        #expect(parse(Array("GET / HTTP/1.1\r\n".utf8)) != .incomplete)
        if case .invalid = parse([0x16, 3, 1, 0, 5, 2, 0, 0, 1, 0]) {} else { Issue.record("server hello accepted") }
        if case .invalid = parse([0x16, 3, 1, 0, 4, 1, 0xff, 0xff, 0xff]) {} else { Issue.record("huge hello accepted") }
        if case .invalid = parse(clientHello(serverName: "bad name!")) {} else { Issue.record("bad SNI accepted") }
    }

    /// A seeded random-mutation fuzz run: the parser must never crash or hang, whatever the bytes.
    @Test func survivesRandomMutations() {
        var generator = SplitMix(seed: 0x7011_6a7e)
        let seeds = [clientHello(serverName: "fuzz.example"), clientHello(serverName: nil, padding: 40), clientHello(serverName: "x", alpn: [])]
        var outcomes = [0, 0, 0]
        for iteration in 0..<20_000 {
            var bytes = seeds[iteration % seeds.count]
            for _ in 0..<(1 + Int(generator.next() % 8)) {
                let position = Int(generator.next() % UInt64(bytes.count))
                switch generator.next() % 4 {
                case 0: bytes[position] = UInt8(truncatingIfNeeded: generator.next())
                case 1: bytes.remove(at: position)
                case 2: bytes.insert(UInt8(truncatingIfNeeded: generator.next()), at: position)
                default: bytes = Array(bytes[0..<position])
                }
                if bytes.isEmpty { bytes = [0x16] }
            }
            switch parse(bytes) {
            case .incomplete: outcomes[0] += 1
            case .complete: outcomes[1] += 1
            case .invalid: outcomes[2] += 1
            }
        }
        #expect(outcomes.allSatisfy { $0 > 0 })
    }
}

/// A tiny deterministic generator so the fuzz run is reproducible.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
