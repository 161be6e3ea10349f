import Glibc
import Testing
import TollgateIO
@testable import TollgateTLS

private func temporaryDirectory() -> String {
    var template = Array("/tmp/tollgate-ca-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) }
}

@Suite struct CertificateAuthorityTests {
    @Test func createsACAWithPrivateKeyFilesAndRefusesToOverwrite() throws {
        let dir = temporaryDirectory() + "/certs"
        let (certificate, key) = try CertificateAuthority.create(directory: dir, force: false)
        var info = stat()
        #expect(stat(key, &info) == 0 && info.st_mode & 0o777 == 0o600)
        #expect(stat(dir, &info) == 0 && info.st_mode & 0o777 == 0o700)
        #expect(Certificate.load(path: certificate)?.subject.contains("Tollgate CA") == true)
        #expect(throws: TLSSetupError.self) { try CertificateAuthority.create(directory: dir, force: false) }
        _ = try CertificateAuthority.create(directory: dir, force: true)
    }

    @Test func refusesAKeyReadableByOthers() throws {
        let dir = temporaryDirectory()
        let (certificate, key) = try CertificateAuthority.create(directory: dir, force: false)
        chmod(key, 0o644)
        #expect(throws: TLSSetupError.self) { try CertificateAuthority(certificatePath: certificate, keyPath: key, cacheCapacity: 4) }
    }

    @Test func mintsLeavesForNamesAndIPsAndBoundsTheCache() throws {
        let dir = temporaryDirectory()
        let (certificatePath, keyPath) = try CertificateAuthority.create(directory: dir, force: false)
        let authority = try CertificateAuthority(certificatePath: certificatePath, keyPath: keyPath, cacheCapacity: 8)
        let loop = try EventLoop(index: 0)
        let leaf = try #require(authority.leaf(for: "origin.test", isIP: false, on: loop) { _ in })
        #expect(leaf.names.sans == "DNS:origin.test")
        #expect(leaf.names.issuer == "Tollgate CA")
        let now = Int64(wallClockMilliseconds() / 1000)
        #expect(leaf.notBefore <= now - 3500)
        #expect(leaf.notAfter <= now + 30 * 86_400 + 5)
        #expect(authority.leaf(for: "origin.test", isIP: false, on: loop) { _ in } === leaf)
        let ipLeaf = try #require(authority.leaf(for: "203.0.113.10", isIP: true, on: loop) { _ in })
        #expect(ipLeaf.names.sans == "IP:203.0.113.10")
        for index in 0..<50 { _ = authority.leaf(for: "host\(index).test", isIP: false, on: loop) { _ in } }
        #expect(authority.statistics.cached == 8)
        #expect(authority.statistics.minted == 52)
    }
}
