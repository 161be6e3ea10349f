#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim

/// An IPv4 or IPv6 address with a port, the only kind of address Tollgate dials or listens on.
public struct SocketAddress: Hashable, Sendable, CustomStringConvertible {
    /// The address bytes: 4 for IPv4, 16 for IPv6.
    public let ip: IPAddress
    public let port: UInt16

    public init(ip: IPAddress, port: UInt16) {
        self.ip = ip
        self.port = port
    }

    /// Parses `1.2.3.4:80`, `[::1]:80` or `*:80` / `:80` (any IPv4 address).
    public init?(parsing text: String) {
        var host = Substring(text)
        guard let colon = host.lastIndex(of: ":") else { return nil }
        guard let port = UInt16(host[host.index(after: colon)...]) else { return nil }
        host = host[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        if host.isEmpty || host == "*" { host = "0.0.0.0" }
        guard let ip = IPAddress(parsing: String(host)) else { return nil }
        self.init(ip: ip, port: port)
    }

    public var description: String {
        ip.isV4 ? "\(ip):\(port)" : "[\(ip)]:\(port)"
    }

    var family: CInt { ip.isV4 ? CInt(AF_INET) : CInt(AF_INET6) }

    init?(storage: sockaddr_storage) {
        var storage = storage
        switch CInt(storage.ss_family) {
        case AF_INET:
            let sin = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in.self) }
            let raw = withUnsafeBytes(of: sin.sin_addr) { Array($0) }
            self.init(ip: IPAddress(bytes: raw), port: UInt16(bigEndian: sin.sin_port))
        case AF_INET6:
            let sin6 = withUnsafeBytes(of: &storage) { $0.load(as: sockaddr_in6.self) }
            let raw = withUnsafeBytes(of: sin6.sin6_addr) { Array($0) }
            let ip = IPAddress(bytes: raw)
            // A v4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; agents are keyed by the v4 form.
            self.init(ip: ip.unmappedV4 ?? ip, port: UInt16(bigEndian: sin6.sin6_port))
        default:
            return nil
        }
    }

    func withSockAddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        if ip.isV4 {
            var sin = sockaddr_in()
            sin.sin_family = sa_family_t(AF_INET)
            sin.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &sin.sin_addr) { $0.copyBytes(from: ip.bytes) }
            return withUnsafePointer(to: &sin) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        var sin6 = sockaddr_in6()
        sin6.sin6_family = sa_family_t(AF_INET6)
        sin6.sin6_port = port.bigEndian
        withUnsafeMutableBytes(of: &sin6.sin6_addr) { $0.copyBytes(from: ip.bytes) }
        return withUnsafePointer(to: &sin6) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
        }
    }
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address, compared and hashed by its bytes.
public struct IPAddress: Hashable, Sendable, CustomStringConvertible {
    /// Network-order bytes; stored inline as two words to keep the type allocation-free.
    @usableFromInline let high: UInt64
    @usableFromInline let low: UInt64
    public let isV4: Bool

    /// 0.0.0.0: the address of no peer. Computed, and inlined: as a stored constant each use
    /// went through its lazy initialisation check (swift_once), once per flow record.
    @inlinable public static var unspecifiedV4: IPAddress { IPAddress(high: 0, low: 0, isV4: true) }

    @inlinable init(high: UInt64, low: UInt64, isV4: Bool) {
        self.high = high
        self.low = low
        self.isV4 = isV4
    }

    public init(bytes: [UInt8]) {
        precondition(bytes.count == 4 || bytes.count == 16, "IP address must have 4 or 16 bytes")
        isV4 = bytes.count == 4
        var h: UInt64 = 0, l: UInt64 = 0
        if isV4 {
            for b in bytes { l = l << 8 | UInt64(b) }
        } else {
            for b in bytes[0..<8] { h = h << 8 | UInt64(b) }
            for b in bytes[8..<16] { l = l << 8 | UInt64(b) }
        }
        high = h
        low = l
    }

    /// Parses dotted-quad IPv4 or any textual IPv6 form (via inet_pton).
    public init?(parsing text: String) {
        var v4 = in_addr()
        if inet_pton(AF_INET, text, &v4) == 1 {
            self.init(bytes: withUnsafeBytes(of: v4) { Array($0) })
            return
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, text, &v6) == 1 {
            self.init(bytes: withUnsafeBytes(of: v6) { Array($0) })
            return
        }
        return nil
    }

    public var bytes: [UInt8] {
        if isV4 { return (0..<4).map { UInt8(truncatingIfNeeded: low >> (24 - 8 * UInt64($0))) } }
        return (0..<8).map { UInt8(truncatingIfNeeded: high >> (56 - 8 * UInt64($0))) }
            + (0..<8).map { UInt8(truncatingIfNeeded: low >> (56 - 8 * UInt64($0))) }
    }

    /// The four octets of an IPv4 address, without allocating.
    public func withV4Octets<R>(_ body: (UInt8, UInt8, UInt8, UInt8) -> R) -> R {
        body(UInt8(truncatingIfNeeded: low >> 24), UInt8(truncatingIfNeeded: low >> 16),
             UInt8(truncatingIfNeeded: low >> 8), UInt8(truncatingIfNeeded: low))
    }

    /// The IPv4 address inside an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
    public var unmappedV4: IPAddress? {
        guard !isV4, high == 0, low >> 32 == 0xffff else { return nil }
        return IPAddress(bytes: Array(bytes[12..<16]))
    }

    /// True when the first `prefix` bits equal those of `network` (same family only).
    public func isIn(network: IPAddress, prefix: Int) -> Bool {
        guard isV4 == network.isV4 else { return false }
        if isV4 {
            let mask: UInt64 = prefix == 0 ? 0 : (0xffff_ffff << UInt64(32 - prefix)) & 0xffff_ffff
            return low & mask == network.low & mask
        }
        if prefix <= 64 {
            let mask: UInt64 = prefix == 0 ? 0 : ~0 << UInt64(64 - prefix)
            return high & mask == network.high & mask
        }
        let mask: UInt64 = ~0 << UInt64(128 - prefix)
        return high == network.high && low & mask == network.low & mask
    }

    public var description: String {
        let raw = bytes
        var out = [CChar](repeating: 0, count: 64)
        let family = isV4 ? AF_INET : AF_INET6
        _ = raw.withUnsafeBytes { inet_ntop(family, $0.baseAddress, &out, socklen_t(out.count)) }
        return String(decoding: out.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

/// An address block (a single address is a /32 or /128).
public struct CIDRBlock: Sendable, Equatable, Hashable, CustomStringConvertible {
    public let network: IPAddress
    public let prefix: Int

    public init(network: IPAddress, prefix: Int) {
        self.network = network
        self.prefix = prefix
    }

    /// Parses `10.0.0.0/8`, `203.0.113.10`, `fd00::/8`.
    public init?(parsing text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false)
        guard let ip = IPAddress(parsing: String(parts[0])) else { return nil }
        let maxPrefix = ip.isV4 ? 32 : 128
        var prefix = maxPrefix
        if parts.count == 2 {
            guard let value = Int(parts[1]), (0...maxPrefix).contains(value) else { return nil }
            prefix = value
        }
        self.init(network: ip, prefix: prefix)
    }

    public func contains(_ ip: IPAddress) -> Bool { ip.isIn(network: network, prefix: prefix) }
    public var description: String { prefix == (network.isV4 ? 32 : 128) ? "\(network)" : "\(network)/\(prefix)" }
}

