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

    /// Released storage is reused by the next buffer of a similar size, never by a much
    /// smaller one (a 4 KiB buffer must not sit on a 64 KiB block).
    @Test func releasedBuffersReuseBlocksOfTheirSize() {
        let blocks = BlockCache(maxBlocks: 2)
        let big = ByteBuffer(blocks: blocks)
        big.reserveWritable(64 * 1024)
        #expect(big.capacity == 64 * 1024)
        big.releaseIfEmpty()
        let small = ByteBuffer(blocks: blocks)
        small.append(Array(repeating: 7, count: 100))
        #expect(small.capacity == 4096)
        let next = ByteBuffer(blocks: blocks)
        next.reserveWritable(40_000)
        #expect(next.capacity == 64 * 1024)
        next.append(Array(repeating: 9, count: 3))
        #expect(next.copyBytes(offset: 0, count: 3) == [9, 9, 9])
        // More releases than the cache holds: the rest are freed.
        small.consume(100)
        small.releaseIfEmpty()
        next.consume(3)
        next.releaseIfEmpty()
        let extra = ByteBuffer(blocks: blocks)
        extra.reserveWritable(8192)
        extra.releaseIfEmpty()
        #expect(small.capacity == 0 && next.capacity == 0 && extra.capacity == 0)
    }
}
