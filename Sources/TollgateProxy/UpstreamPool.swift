import TollgateIO

/// What makes two upstream connections interchangeable: the address, and for TLS the SNI name.
struct PoolKey: Hashable {
    let address: SocketAddress
    /// nil for plain TCP; the SNI sent ("" for none) for TLS.
    let tlsServerName: String?
}

/// Idle keep-alive upstream connections of one loop, per destination: bounded per destination,
/// closed after `upstream_idle`, and closed at once if the server sends anything or hangs up
/// while idle (such a connection can never carry a clean next response).
final class UpstreamPool {
    private var idle: [PoolKey: [PooledConnection]] = [:]
    private let maxPerDestination: Int
    private let idleTimeout: UInt64

    init(maxPerDestination: Int, idleTimeout: UInt64) {
        self.maxPerDestination = maxPerDestination
        self.idleTimeout = idleTimeout
    }

    /// The most recently parked live connection to `destination`, if any.
    func take(_ destination: PoolKey) -> Connection? {
        while let entry = idle[destination]?.popLast() {
            entry.timer.cancel()
            if !entry.connection.isClosed { return entry.connection }
        }
        return nil
    }

    /// Parks a connection whose last response was read completely.
    func put(_ connection: Connection, destination: PoolKey, loop: EventLoop) {
        let entry = PooledConnection(connection: connection, destination: destination, pool: self, loop: loop)
        entry.timer.arm(after: idleTimeout)
        connection.delegate = entry
        connection.wantsRead = true
        // Mutated in place: copying the list out and back would copy it on every park.
        idle[destination, default: []].append(entry)
        if idle[destination]!.count > maxPerDestination {
            let oldest = idle[destination]!.removeFirst()
            oldest.timer.cancel()
            oldest.connection.close()
        }
    }

    fileprivate func discard(_ entry: PooledConnection) {
        entry.timer.cancel()
        entry.connection.close()
        idle[entry.destination]?.removeAll { $0 === entry }
        if idle[entry.destination]?.isEmpty == true { idle[entry.destination] = nil }
    }

    func closeAll() {
        for list in idle.values {
            for entry in list {
                entry.timer.cancel()
                entry.connection.close()
            }
        }
        idle.removeAll()
    }
}

/// Watches one parked connection.
private final class PooledConnection: ConnectionDelegate, TimerTarget {
    let connection: Connection
    let destination: PoolKey
    unowned let pool: UpstreamPool
    private(set) var timer: Timer!

    init(connection: Connection, destination: PoolKey, pool: UpstreamPool, loop: EventLoop) {
        self.connection = connection
        self.destination = destination
        self.pool = pool
        timer = Timer(loop: loop, target: self)
    }

    func connectionReadable(_ connection: Connection) { pool.discard(self) }
    func connectionWritable(_ connection: Connection) {}
    func connectionConnected(_ connection: Connection, error: Errno?) {}
    func connectionFailed(_ connection: Connection, error: ConnectionError) { pool.discard(self) }
    func timerFired(_ timer: Timer) { pool.discard(self) }
}
