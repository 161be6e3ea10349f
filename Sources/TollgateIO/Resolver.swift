#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization

/// Resolves host names on its own threads so no event loop ever blocks in getaddrinfo; results
/// come back on the asking loop. Each loop keeps a small TTL cache in front of it.
public final class Resolver: Sendable {
    private struct Job {
        let host: String
        let deliver: @Sendable ([IPAddress]) -> Void
    }

    private let jobs = Mutex<[Job]>([])
    private let semaphore: CInt

    public init(threads: Int = 2) {
        semaphore = tg_semaphore_eventfd()
        precondition(semaphore >= 0, "eventfd for the resolver failed")
        for index in 0..<threads {
            startThread(name: "tollgate-dns\(index)") { [self] in runWorker() }
        }
    }

    /// Looks `host` up off the loop; `deliver` runs on `loop` with the addresses (empty on failure).
    public func resolve(_ host: String, on loop: EventLoop, deliver: @escaping @Sendable ([IPAddress]) -> Void) {
        jobs.withLock { $0.append(Job(host: host, deliver: { addresses in loop.execute { deliver(addresses) } })) }
        var one: UInt64 = 1
        _ = write(semaphore, &one, 8)
    }

    private func runWorker() {
        while true {
            var value: UInt64 = 0
            if read(semaphore, &value, 8) != 8 { continue }
            guard let job = jobs.withLock({ $0.isEmpty ? nil : $0.removeFirst() }) else { continue }
            job.deliver(Self.lookup(job.host))
        }
    }

    /// getaddrinfo for TCP, blocking: for threads that may wait (never an event loop). IPv4 first.
    public static func lookup(_ host: String) -> [IPAddress] {
        var hints = addrinfo()
        hints.ai_socktype = CInt(TG_SOCK_STREAM)
        var result: UnsafeMutablePointer<addrinfo>?
        guard getaddrinfo(host, nil, &hints, &result) == 0 else { return [] }
        defer { freeaddrinfo(result) }
        var v4: [IPAddress] = [], v6: [IPAddress] = []
        var cursor = result
        while let info = cursor {
            if let sockaddr = info.pointee.ai_addr {
                var storage = sockaddr_storage()
                withUnsafeMutableBytes(of: &storage) { raw in
                    raw.copyMemory(from: UnsafeRawBufferPointer(start: sockaddr, count: Int(info.pointee.ai_addrlen)))
                }
                if let address = SocketAddress(storage: storage) {
                    if address.ip.isV4 { if !v4.contains(address.ip) { v4.append(address.ip) } }
                    else if !v6.contains(address.ip) { v6.append(address.ip) }
                }
            }
            cursor = info.pointee.ai_next
        }
        return v4 + v6
    }
}

/// A per-loop cache of resolved names with a fixed TTL (getaddrinfo does not expose record TTLs).
public final class ResolverCache {
    private var entries: [String: (addresses: [IPAddress], expiry: UInt64)] = [:]
    private let ttl: UInt64
    private let capacity: Int

    public init(ttlNanoseconds: UInt64 = 30_000_000_000, capacity: Int = 4096) {
        ttl = ttlNanoseconds
        self.capacity = capacity
    }

    public func lookup(_ host: String, now: UInt64) -> [IPAddress]? {
        guard let entry = entries[host], entry.expiry > now else { return nil }
        return entry.addresses
    }

    public func store(_ host: String, _ addresses: [IPAddress], now: UInt64) {
        if entries.count >= capacity { entries.removeAll(keepingCapacity: true) }
        // Failures are cached briefly so a broken name does not hammer the resolver.
        entries[host] = (addresses, now + (addresses.isEmpty ? ttl / 10 : ttl))
    }
}
