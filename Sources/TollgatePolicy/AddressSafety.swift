import TollgateIO

/// Address classes an agent must not reach unless a rule names the address explicitly
/// (loopback, private networks, cloud metadata...), after Smokescreen.
public enum AddressSafety {
    private static let v4Classes: [(CIDRBlock, String)] = [
        ("0.0.0.0/8", "unspecified"), ("127.0.0.0/8", "loopback"), ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"), ("192.168.0.0/16", "private"), ("100.64.0.0/10", "cgnat"),
        ("169.254.0.0/16", "link_local"), ("224.0.0.0/4", "multicast"), ("240.0.0.0/4", "reserved"),
        ("255.255.255.255/32", "broadcast"),
    ].map { (CIDRBlock(parsing: $0.0)!, $0.1) }

    private static let v6Classes: [(CIDRBlock, String)] = [
        ("::/128", "unspecified"), ("::1/128", "loopback"), ("::ffff:0:0/96", "ipv4_mapped"),
        ("::/96", "ipv4_compatible"), ("64:ff9b::/96", "ipv4_embedded"), ("64:ff9b:1::/48", "ipv4_embedded"),
        ("2002::/16", "ipv4_embedded"), ("2001::/32", "ipv4_embedded"), ("fc00::/7", "private"),
        ("fe80::/10", "link_local"), ("fec0::/10", "link_local"), ("ff00::/8", "multicast"),
    ].map { (CIDRBlock(parsing: $0.0)!, $0.1) }

    /// The class of an internal address, or nil for a global unicast one; `own` are Tollgate's
    /// own addresses (connecting there would loop).
    public static func internalClass(_ ip: IPAddress, own: Set<IPAddress> = []) -> String? {
        // Fast path for the common case, a public IPv4 address that is not ours.
        if ip.isV4, ip.withV4Octets({ a, b, _, _ in
            !(a == 0 || a == 10 || a == 127 || a >= 224 || (a == 100 && b & 0xC0 == 64) || (a == 169 && b == 254)
              || (a == 172 && b & 0xF0 == 16) || (a == 192 && b == 168))
        }), own.isEmpty || !own.contains(ip) {
            return nil
        }
        let builtIn = (ip.isV4 ? v4Classes : v6Classes).first { $0.0.contains(ip) }?.1
        // Loopback and unspecified say more than "ours"; any other own address is a loop.
        if builtIn != "loopback" && builtIn != "unspecified" && own.contains(ip) { return "tollgate" }
        return builtIn
    }
}
