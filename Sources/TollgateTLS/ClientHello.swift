// TollgateTLS: TLS toward agents and origins — our own ClientHello parser, the CA and leaf
// minting with its cache, OpenSSL contexts, and the transport that runs TLS over a Connection.

/// What a client's first flight says about where it wants to go, read before any SSL object exists.
public struct ClientHello: Equatable, Sendable {
    /// The SNI host name, lower-cased, trailing dot removed.
    public var serverName: String?
    public var alpn: [String]
    /// Offered versions (supported_versions, else the legacy version), e.g. 0x0304 for TLS 1.3.
    public var versions: [UInt16]
}

/// The outcome of parsing the bytes received so far.
public enum ClientHelloParse: Equatable, Sendable {
    case incomplete
    case complete(ClientHello)
    case invalid(String)
}

public enum ClientHelloParser {
    /// Hellos larger than this are refused (real ones, even with post-quantum key shares, are a few KiB).
    public static let maximumLength = 16 * 1024

    /// Reassembles the handshake message from TLS records (it may span several, and records may
    /// arrive split across reads), then parses it.
    public static func parse(_ bytes: UnsafeRawBufferPointer) -> ClientHelloParse {
        var handshake: [UInt8] = []
        var offset = 0
        while true {
            if handshake.count >= 4 {
                let length = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
                guard handshake[0] == 1 else { return .invalid("first handshake message is not a ClientHello") }
                guard length <= maximumLength else { return .invalid("ClientHello of \(length) bytes is too large") }
                if handshake.count >= 4 + length {
                    return parseBody(handshake[4..<(4 + length)])
                }
            }
            guard bytes.count - offset >= 5 else { return .incomplete }
            guard bytes[offset] == 0x16 else { return .invalid("expected a handshake record, got content type \(bytes[offset])") }
            guard bytes[offset + 1] == 3 else { return .invalid("not a TLS record version") }
            let recordLength = Int(bytes[offset + 3]) << 8 | Int(bytes[offset + 4])
            guard recordLength > 0, recordLength <= 16384 + 256 else { return .invalid("bad record length \(recordLength)") }
            let available = min(recordLength, bytes.count - offset - 5)
            handshake.append(contentsOf: bytes[(offset + 5)..<(offset + 5 + available)])
            if handshake.count > maximumLength + 4 { return .invalid("ClientHello is too large") }
            if available < recordLength {
                // A partial record: parse what we have only if the hello is already complete inside it.
                if handshake.count >= 4 {
                    let length = Int(handshake[1]) << 16 | Int(handshake[2]) << 8 | Int(handshake[3])
                    if handshake[0] == 1 && length <= maximumLength && handshake.count >= 4 + length {
                        return parseBody(handshake[4..<(4 + length)])
                    }
                }
                return .incomplete
            }
            offset += 5 + recordLength
        }
    }

    private static func parseBody(_ body: ArraySlice<UInt8>) -> ClientHelloParse {
        var reader = Reader(body)
        guard let legacyVersion = reader.u16(), reader.skip(32),
              let sessionIDLength = reader.u8(), sessionIDLength <= 32, reader.skip(Int(sessionIDLength)),
              let suitesLength = reader.u16(), suitesLength >= 2, suitesLength % 2 == 0, reader.skip(Int(suitesLength)),
              let compressionLength = reader.u8(), compressionLength >= 1, reader.skip(Int(compressionLength))
        else { return .invalid("truncated ClientHello") }
        var hello = ClientHello(serverName: nil, alpn: [], versions: [legacyVersion])
        if reader.isAtEnd { return .complete(hello) }
        guard let extensionsLength = reader.u16(), var extensions = reader.sub(Int(extensionsLength)), reader.isAtEnd else {
            return .invalid("bad extensions block")
        }
        var seen = Set<UInt16>()
        while !extensions.isAtEnd {
            guard let type = extensions.u16(), let length = extensions.u16(), var data = extensions.sub(Int(length)) else {
                return .invalid("truncated extension")
            }
            guard seen.insert(type).inserted else { return .invalid("duplicate extension \(type)") }
            switch type {
            case 0:
                guard let name = parseServerName(&data) else { return .invalid("malformed server_name") }
                hello.serverName = name
            case 16:
                guard let protocols = parseALPN(&data) else { return .invalid("malformed ALPN") }
                hello.alpn = protocols
            case 43:
                guard let count = data.u8(), count % 2 == 0, count > 0, var list = data.sub(Int(count)), data.isAtEnd else {
                    return .invalid("malformed supported_versions")
                }
                var versions: [UInt16] = []
                while let version = list.u16() { versions.append(version) }
                hello.versions = versions
            default:
                break
            }
        }
        return .complete(hello)
    }

    private static func parseServerName(_ data: inout Reader) -> String? {
        guard let listLength = data.u16(), var list = data.sub(Int(listLength)), data.isAtEnd else { return nil }
        while !list.isAtEnd {
            guard let kind = list.u8(), let length = list.u16(), let name = list.bytes(Int(length)) else { return nil }
            guard kind == 0 else { continue }
            return normalizedHostName(name)
        }
        return nil
    }

    private static func parseALPN(_ data: inout Reader) -> [String]? {
        guard let listLength = data.u16(), var list = data.sub(Int(listLength)), data.isAtEnd, listLength > 0 else { return nil }
        var protocols: [String] = []
        while !list.isAtEnd {
            guard let length = list.u8(), length > 0, let name = list.bytes(Int(length)) else { return nil }
            protocols.append(String(decoding: name, as: UTF8.self))
        }
        return protocols
    }

    /// A DNS name as sent in SNI: letters, digits, '-', '_', '.', at most 253 bytes after dropping
    /// a trailing dot; lower-cased. Anything else (including IP literals, which SNI forbids) is nil.
    static func normalizedHostName(_ bytes: ArraySlice<UInt8>) -> String? {
        var name = bytes
        if name.last == UInt8(ascii: ".") { name = name.dropLast() }
        guard !name.isEmpty, name.count <= 253 else { return nil }
        var lowered: [UInt8] = []
        lowered.reserveCapacity(name.count)
        for b in name {
            switch b {
            case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
                lowered.append(b)
            case UInt8(ascii: "A")...UInt8(ascii: "Z"):
                lowered.append(b | 0x20)
            default:
                return nil
            }
        }
        return String(decoding: lowered, as: UTF8.self)
    }
}

/// A bounds-checked big-endian reader over a slice.
private struct Reader {
    private var slice: ArraySlice<UInt8>
    init(_ slice: ArraySlice<UInt8>) { self.slice = slice }

    var isAtEnd: Bool { slice.isEmpty }

    mutating func u8() -> UInt8? { slice.popFirst() }

    mutating func u16() -> UInt16? {
        guard slice.count >= 2 else { return nil }
        let value = UInt16(slice[slice.startIndex]) << 8 | UInt16(slice[slice.startIndex + 1])
        slice = slice.dropFirst(2)
        return value
    }

    mutating func skip(_ count: Int) -> Bool { bytes(count) != nil }

    mutating func bytes(_ count: Int) -> ArraySlice<UInt8>? {
        guard slice.count >= count else { return nil }
        let result = slice.prefix(count)
        slice = slice.dropFirst(count)
        return result
    }

    mutating func sub(_ count: Int) -> Reader? { bytes(count).map(Reader.init) }
}
