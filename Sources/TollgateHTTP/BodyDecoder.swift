/// One step of body decoding over the bytes currently buffered.
public enum BodyStep: Equatable, Sendable {
    /// Body bytes at `offset..<offset+count` of the view; `consumed` covers them and any framing before them.
    case data(offset: Int, count: Int, consumed: Int)
    /// Framing bytes were consumed but no body bytes are available yet.
    case needMore(consumed: Int)
    /// The body is complete after `consumed` bytes.
    case end(consumed: Int)
}

/// Incremental decoder for Content-Length, chunked and close-delimited bodies. Chunk sizes,
/// extensions and trailers are validated; the caller re-frames the data it forwards.
public struct BodyDecoder: Sendable {
    private enum State: Sendable {
        case length(remaining: Int)
        case untilClose
        case chunkSize(value: Int, digits: Int)
        case chunkExtension(size: Int)
        case chunkSizeLF(size: Int)
        case chunkData(remaining: Int)
        case chunkDataCR
        case chunkDataLF
        case trailerLineStart
        case trailerLine
        case trailerLineLF(empty: Bool)
        case done
    }

    private var state: State
    /// Longest chunk-size line accepted (hex digits), so an endless size is refused early.
    private static let maxSizeDigits = 15

    public init(framing: BodyFraming) {
        switch framing {
        case .none: state = .done
        case .length(let n): state = n == 0 ? .done : .length(remaining: n)
        case .chunked: state = .chunkSize(value: 0, digits: 0)
        case .untilClose: state = .untilClose
        }
    }

    public var isComplete: Bool { if case .done = state { return true } else { return false } }

    public mutating func next(_ bytes: UnsafeRawBufferPointer) throws(HTTPError) -> BodyStep {
        var i = 0
        while true {
            switch state {
            case .done:
                return .end(consumed: i)
            case .untilClose:
                let n = bytes.count - i
                return n > 0 ? .data(offset: i, count: n, consumed: bytes.count) : .needMore(consumed: i)
            case .length(let remaining):
                let n = min(remaining, bytes.count - i)
                if n == 0 { return .needMore(consumed: i) }
                state = remaining == n ? .done : .length(remaining: remaining - n)
                return .data(offset: i, count: n, consumed: i + n)
            case .chunkData(let remaining):
                let n = min(remaining, bytes.count - i)
                if n == 0 { return .needMore(consumed: i) }
                state = remaining == n ? .chunkDataCR : .chunkData(remaining: remaining - n)
                return .data(offset: i, count: n, consumed: i + n)
            default:
                guard i < bytes.count else { return .needMore(consumed: i) }
                try advanceFraming(bytes[i])
                i += 1
            }
        }
    }

    private mutating func advanceFraming(_ b: UInt8) throws(HTTPError) {
        switch state {
        case .chunkSize(let value, let digits):
            if let digit = hexValue(b) {
                guard digits < Self.maxSizeDigits else { throw .invalidChunkSize }
                state = .chunkSize(value: value << 4 | digit, digits: digits + 1)
            } else {
                guard digits > 0 else { throw .invalidChunkSize }
                switch b {
                case 0x0D: state = .chunkSizeLF(size: value)
                case UInt8(ascii: ";"): state = .chunkExtension(size: value)
                default: throw .invalidChunkSize  // includes whitespace: BWS before ';' is a known desync vector
                }
            }
        case .chunkExtension(let size):
            if b == 0x0D { state = .chunkSizeLF(size: size) }
            else if b < 0x20 && b != 0x09 || b == 0x7F { throw .invalidChunkFraming }
        case .chunkSizeLF(let size):
            guard b == 0x0A else { throw .invalidChunkFraming }
            state = size == 0 ? .trailerLineStart : .chunkData(remaining: size)
        case .chunkDataCR:
            guard b == 0x0D else { throw .invalidChunkFraming }
            state = .chunkDataLF
        case .chunkDataLF:
            guard b == 0x0A else { throw .invalidChunkFraming }
            state = .chunkSize(value: 0, digits: 0)
        case .trailerLineStart:
            state = b == 0x0D ? .trailerLineLF(empty: true) : .trailerLine
            if b == 0x0A { throw .invalidChunkFraming }
        case .trailerLine:
            if b == 0x0D { state = .trailerLineLF(empty: false) }
            else if b == 0x0A || b == 0 { throw .invalidChunkFraming }
        case .trailerLineLF(let empty):
            guard b == 0x0A else { throw .invalidChunkFraming }
            state = empty ? .done : .trailerLineStart
        default:
            preconditionFailure("advanceFraming called in a data state")
        }
    }
}

@inline(__always)
private func hexValue(_ b: UInt8) -> Int? {
    switch b {
    case 0x30...0x39: return Int(b - 0x30)
    case 0x41...0x46: return Int(b - 0x41 + 10)
    case 0x61...0x66: return Int(b - 0x61 + 10)
    default: return nil
    }
}
