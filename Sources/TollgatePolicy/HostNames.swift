import TollgateIO

/// Why a host pattern was refused.
public struct HostProblem: Error, Sendable {
    public let message: String
}

/// Host name normalisation shared by rules and requests: lower case, IDNA (punycode) for
/// non-ASCII labels, trailing dot dropped — so `GitHub.com.` and `github.com` are one host.
public enum HostNames {
    /// Normalises a host from a request (SNI, Host header, URL); nil when it is not a valid name.
    public static func normalize(_ host: String) -> String? {
        var name = Substring(host)
        if name.hasSuffix(".") { name = name.dropLast() }
        guard !name.isEmpty, name.utf8.count <= 253 else { return nil }
        // The common case, already normal (every request's Host passes here): no new String.
        if name.utf8.count == host.utf8.count, host.utf8.allSatisfy({ isHostByte($0) && !($0 >= 0x41 && $0 <= 0x5A) }) {
            return host
        }
        if name.utf8.allSatisfy({ $0 < 0x80 }) {
            var lowered = [UInt8]()
            lowered.reserveCapacity(name.utf8.count)
            for byte in name.utf8 {
                guard isHostByte(byte) else { return nil }
                lowered.append(byte >= 0x41 && byte <= 0x5A ? byte | 0x20 : byte)
            }
            return String(decoding: lowered, as: UTF8.self)
        }
        var labels: [String] = []
        for label in name.split(separator: ".", omittingEmptySubsequences: false) {
            if label.unicodeScalars.allSatisfy({ $0.isASCII }) {
                labels.append(label.lowercased())
            } else {
                guard let encoded = Punycode.encode(String(label).lowercased()) else { return nil }
                labels.append("xn--" + encoded)
            }
        }
        let joined = labels.joined(separator: ".")
        guard joined.utf8.allSatisfy(isHostByte), joined.utf8.count <= 253 else { return nil }
        return joined
    }

    /// Parses a rule's host pattern: exact name, `*.suffix`, or an IP address / CIDR.
    public static func pattern(_ text: String) -> Result<HostPattern, HostProblem> {
        if text.contains("/") || IPAddress(parsing: text) != nil {
            guard let block = CIDRBlock(parsing: text) else { return .failure(HostProblem(message: "not a valid CIDR")) }
            return .success(.network(block))
        }
        if text.hasPrefix("*.") {
            guard let suffix = normalize(String(text.dropFirst(2))), !suffix.contains("*") else {
                return .failure(HostProblem(message: "wildcards are only allowed as a leading '*.'"))
            }
            return .success(.suffix("." + suffix))
        }
        if text.contains("*") { return .failure(HostProblem(message: "wildcards are only allowed as a leading '*.'")) }
        guard let name = normalize(text) else { return .failure(HostProblem(message: "not a valid host name")) }
        return .success(.exact(name))
    }

    private static func isHostByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
             UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"):
            return true
        default:
            return false
        }
    }
}

/// RFC 3492 Punycode encoding of one label (the part after `xn--`).
enum Punycode {
    private static let base = 36, tMin = 1, tMax = 26, skew = 38, damp = 700, initialBias = 72, initialN = 128

    static func encode(_ label: String) -> String? {
        let scalars = label.unicodeScalars.map { Int($0.value) }
        var output = scalars.filter { $0 < 0x80 }.map { UInt8($0) }
        let basicCount = output.count
        var handled = basicCount
        if basicCount > 0 { output.append(UInt8(ascii: "-")) }
        var n = initialN, delta = 0, bias = initialBias
        while handled < scalars.count {
            guard let m = scalars.filter({ $0 >= n }).min() else { return nil }
            delta += (m - n) * (handled + 1)
            n = m
            for c in scalars {
                if c < n { delta += 1 }
                if c == n {
                    var q = delta
                    var k = base
                    while true {
                        let t = k <= bias ? tMin : (k >= bias + tMax ? tMax : k - bias)
                        if q < t { break }
                        output.append(digit(t + (q - t) % (base - t)))
                        q = (q - t) / (base - t)
                        k += base
                    }
                    output.append(digit(q))
                    bias = adapt(delta, handled + 1, handled == basicCount)
                    delta = 0
                    handled += 1
                }
            }
            delta += 1
            n += 1
        }
        return String(decoding: output, as: UTF8.self)
    }

    private static func digit(_ d: Int) -> UInt8 { d < 26 ? UInt8(d) + UInt8(ascii: "a") : UInt8(d - 26) + UInt8(ascii: "0") }

    private static func adapt(_ delta: Int, _ count: Int, _ first: Bool) -> Int {
        var delta = first ? delta / damp : delta / 2
        delta += delta / count
        var k = 0
        while delta > ((base - tMin) * tMax) / 2 {
            delta /= base - tMin
            k += base
        }
        return k + (base - tMin + 1) * delta / (delta + skew)
    }
}
