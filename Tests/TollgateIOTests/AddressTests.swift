import Testing
@testable import TollgateIO

@Suite struct AddressTests {
    @Test func parsesAndPrintsAddresses() {
        #expect(SocketAddress(parsing: "10.0.0.1:80")?.description == "10.0.0.1:80")
        #expect(SocketAddress(parsing: "[::1]:443")?.description == "[::1]:443")
        #expect(SocketAddress(parsing: ":8080")?.description == "0.0.0.0:8080")
        #expect(SocketAddress(parsing: "10.0.0.1") == nil)
        #expect(SocketAddress(parsing: "host:80") == nil)
    }

    @Test func matchesNetworks() {
        let ip = IPAddress(parsing: "10.99.0.2")!
        #expect(ip.isIn(network: IPAddress(parsing: "10.99.0.0")!, prefix: 24))
        #expect(!ip.isIn(network: IPAddress(parsing: "10.98.0.0")!, prefix: 16))
        #expect(ip.isIn(network: IPAddress(parsing: "0.0.0.0")!, prefix: 0))
        let v6 = IPAddress(parsing: "fd00::1234")!
        #expect(v6.isIn(network: IPAddress(parsing: "fd00::")!, prefix: 8))
        #expect(!v6.isIn(network: ip, prefix: 8))
        #expect(IPAddress(parsing: "::ffff:10.1.2.3")?.unmappedV4 == IPAddress(parsing: "10.1.2.3"))
    }

    @Test func byteBufferCompactsAndGrows() {
        let buffer = ByteBuffer()
        buffer.append(Array(repeating: 1, count: 5000))
        buffer.consume(4000)
        buffer.append(Array(repeating: 2, count: 3000))
        #expect(buffer.readableBytes == 4000)
        #expect(buffer[999] == 1 && buffer[1000] == 2)
        buffer.appendHex(0x1a2f)
        buffer.consume(4000)
        #expect(buffer.copyBytes(offset: 0, count: 4) == Array("1a2f".utf8))
        buffer.consume(4)
        buffer.releaseIfEmpty()
        #expect(buffer.capacity == 0)
    }
}
