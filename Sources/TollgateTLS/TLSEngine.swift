import CTollgateShim
import Synchronization
import TollgateIO

/// Everything TLS needs at run time, shared by all loops: the CA, the agent-facing and
/// origin-facing contexts, the upstream session cache and the hosts learned to splice.
public final class TLSEngine: @unchecked Sendable {  // contexts are immutable after init; mutable state is behind Mutexes
    public let authority: CertificateAuthority
    private let serverContext: OpaquePointer
    private let clientContext: OpaquePointer
    private let sessions = Mutex<[String: SessionBox]>([:])
    private let learnedSplices = Mutex<Set<String>>([])

    public init(authority: CertificateAuthority, upstreamCAFile: String?) throws(TLSSetupError) {
        self.authority = authority
        guard let server = tg_server_context() else { throw TLSSetupError("cannot create the TLS server context") }
        var error = [CChar](repeating: 0, count: 256)
        guard let client = tg_client_context(upstreamCAFile, &error, error.count) else {
            SSL_CTX_free(server)
            throw TLSSetupError("upstream trust: " + String(decoding: error.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self))
        }
        serverContext = server
        clientContext = client
    }

    deinit {
        SSL_CTX_free(serverContext)
        SSL_CTX_free(clientContext)
    }

    /// The agent-facing side: replays `clientHello` (already read from the socket) into OpenSSL.
    public func serverTransport(socket: Socket, clientHello: ByteBuffer, certificate: Certificate) -> TLSTransport? {
        let ssl = clientHello.withReadableBytes { hello in
            tg_ssl_server(serverContext, socket.fd, hello.baseAddress?.assumingMemoryBound(to: UInt8.self), hello.count,
                          certificate.x509, authority.leafKey.pkey)
        }
        return ssl.map { TLSTransport(ssl: $0, isClient: false) }
    }

    /// The origin-facing side: SNI `serverName` (when the agent sent one), verifying that name or
    /// else the IP address; resumes a cached session for the same origin.
    public func clientTransport(socket: Socket, serverName: String?, address: IPAddress, cacheKey: String) -> TLSTransport? {
        let session = sessions.withLock { $0[cacheKey] }
        let verifyName = serverName ?? address.description
        let ssl = tg_ssl_client(clientContext, socket.fd, serverName, verifyName, serverName == nil ? 1 : 0, session?.session)
        return ssl.map { TLSTransport(ssl: $0, isClient: true) }
    }

    /// Remembers the session of a finished upstream connection for the next one to the same origin.
    public func storeSession(from transport: TLSTransport, cacheKey: String) {
        guard let session = transport.copySession() else { return }
        let box = SessionBox(session)
        sessions.withLock { cache in
            if cache.count > 4096 { cache.removeAll() }
            cache[cacheKey] = box
        }
    }

    /// `tls.splice_on_client_reject`: hosts whose clients refused our certificate are spliced from now on.
    public func learnSplice(_ host: String) { learnedSplices.withLock { _ = $0.insert(host) } }
    public func isLearnedSplice(_ host: String) -> Bool { learnedSplices.withLock { $0.contains(host) } }
}

/// An SSL_SESSION reference.
private final class SessionBox: @unchecked Sendable {  // SSL_SESSION is refcounted and read-only once cached
    let session: OpaquePointer
    init(_ session: OpaquePointer) { self.session = session }
    deinit { SSL_SESSION_free(session) }
}

/// A list of host patterns (`example.com`, `*.example.com`) matched case-insensitively.
public struct HostPatterns: Sendable {
    private let exact: Set<String>
    private let suffixes: [String]

    public init(_ patterns: [String]) {
        var exact = Set<String>(), suffixes: [String] = []
        for pattern in patterns {
            let lowered = pattern.lowercased()
            if lowered.hasPrefix("*.") { suffixes.append(String(lowered.dropFirst(1))) } else { exact.insert(lowered) }
        }
        self.exact = exact
        self.suffixes = suffixes
    }

    public func matches(_ host: String) -> Bool {
        exact.contains(host) || suffixes.contains { host.hasSuffix($0) && host.count > $0.count }
    }
}
