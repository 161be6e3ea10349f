#if canImport(Glibc)
import Glibc
#endif

/// A growable byte queue for one direction of a connection: bytes are appended at the writer
/// index and consumed from the reader index. Owns malloc'd storage so reads and writes go
/// straight from and to the kernel without copy-on-write or exclusivity checks; confined to
/// the loop thread that owns its connection.
public final class ByteBuffer {
    private var storage: UnsafeMutableRawPointer?
    public private(set) var capacity = 0
    private var readerIndex = 0
    private var writerIndex = 0
    /// Where released storage goes and fresh storage comes from, when set.
    private let blocks: BlockCache?

    /// `blocks`: the loop's cache, for a buffer released whenever it empties (a keep-alive
    /// connection's inbound, every request) — malloc and free of 64 KiB each time otherwise.
    public init(capacity: Int = 0, blocks: BlockCache? = nil) {
        self.blocks = blocks
        if capacity > 0 { grow(to: capacity) }
    }

    deinit { giveBack() }

    public var readableBytes: Int { writerIndex - readerIndex }
    public var isEmpty: Bool { writerIndex == readerIndex }

    /// A byte at `offset` from the start of the readable region.
    @inline(__always)
    public subscript(offset: Int) -> UInt8 {
        precondition(offset >= 0 && offset < readableBytes, "ByteBuffer index out of range")
        return storage!.load(fromByteOffset: readerIndex + offset, as: UInt8.self)
    }

    /// Calls `body` with the readable bytes; the pointer is valid only inside `body`.
    @inline(__always)
    public func withReadableBytes<R, E: Error>(_ body: (UnsafeRawBufferPointer) throws(E) -> R) throws(E) -> R {
        guard let storage else { return try body(UnsafeRawBufferPointer(start: nil, count: 0)) }
        return try body(UnsafeRawBufferPointer(start: storage + readerIndex, count: readableBytes))
    }

    /// Drops `count` bytes from the front.
    public func consume(_ count: Int) {
        precondition(count <= readableBytes, "consuming more than is readable")
        readerIndex += count
        if readerIndex == writerIndex { readerIndex = 0; writerIndex = 0 }
    }

    public func removeAll() { readerIndex = 0; writerIndex = 0 }

    /// Frees the storage when nothing is buffered, so idle connections hold no buffer memory.
    public func releaseIfEmpty() {
        guard isEmpty, storage != nil else { return }
        giveBack()
        storage = nil
        capacity = 0
        readerIndex = 0
        writerIndex = 0
    }

    private func giveBack() {
        guard let storage else { return }
        if blocks?.keep(storage, capacity: capacity) != true { free(storage) }
    }

    public func append(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        reserveWritable(bytes.count)
        (storage! + writerIndex).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
        writerIndex += bytes.count
    }

    public func append(_ bytes: [UInt8]) { bytes.withUnsafeBytes { append($0) } }

    public func append(_ byte: UInt8) {
        reserveWritable(1)
        storage!.storeBytes(of: byte, toByteOffset: writerIndex, as: UInt8.self)
        writerIndex += 1
    }

    public func append(_ text: StaticString) {
        append(UnsafeRawBufferPointer(start: text.utf8Start, count: text.utf8CodeUnitCount))
    }

    public func append(_ text: String) {
        var text = text
        text.withUTF8 { append(UnsafeRawBufferPointer($0)) }
    }

    /// Appends a decimal integer without going through String.
    public func appendDecimal(_ value: Int) {
        if value < 0 { append(UInt8(ascii: "-")); appendDecimal(-value); return }
        if value >= 10 { appendDecimal(value / 10) }
        append(UInt8(ascii: "0") + UInt8(value % 10))
    }

    /// Appends a lowercase hexadecimal integer (chunk sizes).
    public func appendHex(_ value: Int) {
        if value >= 16 { appendHex(value >> 4) }
        let digit = UInt8(value & 0xf)
        append(digit < 10 ? UInt8(ascii: "0") + digit : UInt8(ascii: "a") + digit - 10)
    }

    /// Moves up to `count` readable bytes of `other` onto the end of this buffer.
    public func append(movingFrom other: ByteBuffer, count: Int) {
        let n = min(count, other.readableBytes)
        other.withReadableBytes { append(UnsafeRawBufferPointer(rebasing: $0[0..<n])) }
        other.consume(n)
    }

    /// The bytes `[offset, offset+count)` of the readable region as an array (header storage).
    public func copyBytes(offset: Int, count: Int) -> [UInt8] {
        withReadableBytes { Array($0[offset..<(offset + count)]) }
    }

    /// Makes room for `count` more bytes, compacting before growing.
    public func reserveWritable(_ count: Int) {
        if capacity - writerIndex >= count { return }
        if readerIndex > 0 && capacity - readableBytes >= count {
            let live = readableBytes
            if live > 0 { storage!.copyMemory(from: storage! + readerIndex, byteCount: live) }
            readerIndex = 0
            writerIndex = live
            return
        }
        var newCapacity = max(capacity * 2, 4096)
        while newCapacity - readableBytes < count { newCapacity *= 2 }
        grow(to: newCapacity)
    }

    private func grow(to newCapacity: Int) {
        if storage == nil, let (block, blockCapacity) = blocks?.take(minimum: newCapacity) {
            storage = block
            capacity = blockCapacity
            return
        }
        let live = readableBytes
        let fresh = malloc(newCapacity)!
        if live > 0 { fresh.copyMemory(from: storage! + readerIndex, byteCount: live) }
        free(storage)
        storage = fresh
        capacity = newCapacity
        readerIndex = 0
        writerIndex = live
    }

    /// Runs `body` over `count` bytes of free space and keeps what it reports written.
    func appendInPlace(_ count: Int, _ body: (UnsafeMutableRawBufferPointer) -> Int) -> Int {
        let n = body(UnsafeMutableRawBufferPointer(start: storage! + writerIndex, count: capacity - writerIndex))
        if n > 0 { writerIndex += n }
        return n
    }

    /// read(2) into the free space (at most `max` bytes); used by the socket layer.
    func readFrom(fd: CInt, max: Int) -> Int {
        reserveWritable(max)
        let n = read(fd, storage! + writerIndex, max)
        if n > 0 { writerIndex += n }
        return n
    }

    /// send(2) of the readable bytes; used by the socket layer.
    func writeTo(fd: CInt) -> Int {
        guard readableBytes > 0 else { return 0 }
        let n = tg_send(fd, storage! + readerIndex, readableBytes)
        if n > 0 { consume(n) }
        return n
    }
}

import CTollgateShim

/// Storage blocks of released buffers, kept for the next buffer that needs one: one per loop
/// (loop-confined), bounded in count and block size so idle memory stays small (4 MiB at
/// most). 64 blocks: with 16, many of fifty keep-alive clients' 4 KiB and 64 KiB buffers still
/// went through malloc and free.
public final class BlockCache {
    private var blocks: [(pointer: UnsafeMutableRawPointer, capacity: Int)] = []
    private let maxBlocks: Int
    private let maxCapacity: Int

    public init(maxBlocks: Int = 64, maxCapacity: Int = 64 * 1024) {
        self.maxBlocks = maxBlocks
        self.maxCapacity = maxCapacity
        blocks.reserveCapacity(maxBlocks)
    }

    deinit { for block in blocks { free(block.pointer) } }

    /// Keeps `pointer` (false: the caller frees it).
    func keep(_ pointer: UnsafeMutableRawPointer, capacity: Int) -> Bool {
        guard blocks.count < maxBlocks, capacity <= maxCapacity else { return false }
        blocks.append((pointer, capacity))
        return true
    }

    /// The most recently kept block (the warmest in cache) of `minimum` to twice `minimum`
    /// bytes: a buffer that needs 4 KiB must not sit on a 64 KiB block.
    func take(minimum: Int) -> (UnsafeMutableRawPointer, Int)? {
        guard let index = blocks.lastIndex(where: { $0.capacity >= minimum && $0.capacity <= 2 * minimum }) else { return nil }
        let block = blocks.remove(at: index)
        return (block.pointer, block.capacity)
    }
}
