#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateIO

/// Why TLS could not be set up at start-up (operator-facing).
public struct TLSSetupError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// An X509 certificate we own a reference to.
public final class Certificate: @unchecked Sendable {  // immutable after creation; X509 refcounting is atomic
    let x509: OpaquePointer
    public let notBefore: Int64
    public let notAfter: Int64
    public let subject: String
    public let sha256: [UInt8]

    init?(taking x509: OpaquePointer?) {
        guard let x509 else { return nil }
        self.x509 = x509
        var subject = [CChar](repeating: 0, count: 512)
        var notBefore: Int64 = 0, notAfter: Int64 = 0
        var digest = [UInt8](repeating: 0, count: 32)
        _ = tg_certificate_info(x509, &subject, subject.count, &notBefore, &notAfter, &digest)
        self.subject = String(decoding: subject.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        self.notBefore = notBefore
        self.notAfter = notAfter
        sha256 = digest
    }

    deinit { X509_free(x509) }

    public static func load(path: String) -> Certificate? { Certificate(taking: tg_load_certificate(path)) }

    /// Subject alternative names ("DNS:a, IP:1.2.3.4") and the issuer's common name.
    public var names: (sans: String, issuer: String) {
        var sans = [CChar](repeating: 0, count: 1024), issuer = [CChar](repeating: 0, count: 256)
        _ = tg_certificate_names(x509, &sans, sans.count, &issuer, issuer.count)
        func text(_ c: [CChar]) -> String { String(decoding: c.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) }
        return (text(sans), text(issuer))
    }

    public var fingerprint: String {
        sha256.map { byte in
            let hex = Array("0123456789ABCDEF".utf8)
            return String(decoding: [hex[Int(byte >> 4)], hex[Int(byte & 0xf)]], as: UTF8.self)
        }.joined(separator: ":")
    }
}

/// A private key we own a reference to.
final class PrivateKey: @unchecked Sendable {  // immutable; EVP_PKEY refcounting is atomic
    let pkey: OpaquePointer
    init?(taking pkey: OpaquePointer?) {
        guard let pkey else { return nil }
        self.pkey = pkey
    }
    deinit { EVP_PKEY_free(pkey) }
}

/// Tollgate's CA: mints leaf certificates per name, all sharing one key made at start-up, and
/// keeps them in a bounded LRU cache. Concurrent requests for a name being minted wait for that
/// mint (their callbacks run on their own loops) instead of minting again.
public final class CertificateAuthority: Sendable {
    private struct Entry {
        let certificate: Certificate
        var lastUsed: UInt64
    }
    private struct Cache {
        var entries: [String: Entry] = [:]
        var minting: [String: [@Sendable (Certificate?) -> Void]] = [:]
        var clock: UInt64 = 0
        var minted = 0
    }

    public let caCertificate: Certificate
    private let caKey: PrivateKey
    let leafKey: PrivateKey
    private let cache = Mutex(Cache())
    public let capacity: Int
    /// Leaf lifetime: 30 days, never past the CA's own expiry.
    private static let leafLifetime: Int64 = 30 * 86_400
    /// A cached leaf this close to expiry is minted again.
    private static let renewMargin: Int64 = 86_400

    /// Loads the CA; refuses a key readable by group or others.
    public init(certificatePath: String, keyPath: String, cacheCapacity: Int) throws(TLSSetupError) {
        var info = stat()
        guard stat(keyPath, &info) == 0 else {
            throw TLSSetupError("CA key \(keyPath): \(String(cString: strerror(errno))) (create one with `tollgate ca init`)")
        }
        if info.st_mode & 0o077 != 0 {
            throw TLSSetupError("CA key \(keyPath) is readable by group or others (mode \(String(info.st_mode & 0o777, radix: 8))); run `chmod 600 \(keyPath)`")
        }
        guard let certificate = Certificate.load(path: certificatePath) else {
            throw TLSSetupError("CA certificate \(certificatePath): cannot be read as PEM")
        }
        guard let key = PrivateKey(taking: tg_load_private_key(keyPath)) else {
            throw TLSSetupError("CA key \(keyPath): cannot be read as a PEM private key")
        }
        guard tg_key_matches(certificate.x509, key.pkey) != 0 else {
            throw TLSSetupError("CA key \(keyPath) does not belong to \(certificatePath)")
        }
        guard let leafKey = PrivateKey(taking: tg_generate_p256_key()) else { throw TLSSetupError("cannot generate the leaf key") }
        caCertificate = certificate
        caKey = key
        self.leafKey = leafKey
        capacity = max(1, cacheCapacity)
    }

    /// The leaf for `name`: returned at once when cached (or minted here), otherwise nil and
    /// `whenReady` runs later on `loop`, after another thread's mint of the same name finishes.
    public func leaf(for name: String, isIP: Bool, on loop: EventLoop, whenReady: @escaping @Sendable (Certificate?) -> Void) -> Certificate? {
        let now = Int64(wallClockMilliseconds() / 1000)
        let cached: Certificate?? = cache.withLock { cache in
            cache.clock += 1
            if let entry = cache.entries[name], entry.certificate.notAfter - now > Self.renewMargin {
                cache.entries[name]!.lastUsed = cache.clock
                return .some(entry.certificate)
            }
            if cache.minting[name] != nil {
                cache.minting[name]!.append { certificate in loop.execute { whenReady(certificate) } }
                return .some(nil)
            }
            cache.minting[name] = []
            return nil
        }
        if let cached { return cached }
        let certificate = mint(name: name, isIP: isIP, now: now)
        let waiters = cache.withLock { cache in
            if let certificate {
                cache.entries[name] = Entry(certificate: certificate, lastUsed: cache.clock)
                cache.minted += 1
                if cache.entries.count > capacity, let oldest = cache.entries.min(by: { $0.value.lastUsed < $1.value.lastUsed }) {
                    cache.entries[oldest.key] = nil
                }
            }
            return cache.minting.removeValue(forKey: name) ?? []
        }
        for waiter in waiters { waiter(certificate) }
        return certificate
    }

    /// Cached leaves and leaves minted so far (for metrics).
    public var statistics: (cached: Int, minted: Int) { cache.withLock { ($0.entries.count, $0.minted) } }

    private func mint(name: String, isIP: Bool, now: Int64) -> Certificate? {
        let notAfter = min(now + Self.leafLifetime, caCertificate.notAfter)
        return Certificate(taking: tg_mint_leaf(caCertificate.x509, caKey.pkey, leafKey.pkey, name, isIP ? 1 : 0, now - 3600, notAfter))
    }

    /// Writes a new CA (key 0600 in a 0700 directory); refuses to replace one unless `force`.
    public static func create(directory: String, force: Bool, commonName: String = "Tollgate CA", days: Int = 3650) throws(TLSSetupError) -> (certificate: String, key: String) {
        let certificatePath = directory + "/ca.pem", keyPath = directory + "/ca-key.pem"
        if mkdir(directory, 0o700) != 0 && errno != EEXIST {
            throw TLSSetupError("\(directory): \(String(cString: strerror(errno)))")
        }
        _ = chmod(directory, 0o700)
        var existing = stat()
        if stat(keyPath, &existing) == 0 || stat(certificatePath, &existing) == 0 {
            guard force else { throw TLSSetupError("a CA already exists in \(directory); use --force to replace it") }
            unlink(keyPath)
            unlink(certificatePath)
        }
        var error = [CChar](repeating: 0, count: 256)
        guard tg_ca_create(certificatePath, keyPath, commonName, CInt(days), &error, error.count) == 0 else {
            throw TLSSetupError(String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        return (certificatePath, keyPath)
    }
}
