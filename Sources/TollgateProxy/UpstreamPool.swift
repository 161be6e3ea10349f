import TollgateIO

/// What makes two upstream connections interchangeable: the address, and for TLS the SNI name.
struct PoolKey: Hashable {
    let address: SocketAddress
    /// nil for plain TCP; the SNI sent ("" for none) for TLS.
    let tlsServerName: String?
}

/// Idle keep-alive upstream connections of one loop, per destination: bounded per destination,
/// closed after `upstream_idle`, and closed at once if the server sends anything or hangs up
/// while idle (such a connection can never carry a clean next response). A keep-alive client
/// parks and takes back a connection on every request, so the watchers and the per-destination
/// lists are reused rather than allocated each time.
final class UpstreamPool {
    private var idle: [PoolKey: IdleList] = [:]
    /// Watchers of connections taken back, ready for the next park.
    private var spare: [PooledConnection] = []
    private let maxPerDestination: Int
    private let idleTimeout: UInt64

    init(maxPerDestination: Int, idleTimeout: UInt64) {
        self.maxPerDestination = maxPerDestination
        self.idleTimeout = idleTimeout
    }

    /// The most recently parked live connection to `destination`, if any.
    func take(_ destination: PoolKey) -> Connection? {
        guard let list = idle[destination] else { return nil }
        while let entry = list.entries.popLast() {
            entry.timer.cancel()
            let connection = entry.connection
            release(entry)
            if let connection, !connection.isClosed { return connection }
        }
        return nil
    }

    /// Parks a connection whose last response was read completely.
    func put(_ connection: Connection, destination: PoolKey, loop: EventLoop) {
        let entry = spare.popLast() ?? PooledConnection(pool: self, loop: loop)
        entry.connection = connection
        entry.destination = destination
        entry.timer.arm(after: idleTimeout)
        connection.delegate = entry
        connection.wantsRead = true
        let list: IdleList
        if let existing = idle[destination] {
            list = existing
        } else {
            // Emptied lists stay (a keep-alive client empties and refills one per request);
            // with many destinations they are pruned now and then.
            if idle.count >= 1024 { idle = idle.filter { !$0.value.entries.isEmpty } }
            list = IdleList()
            idle[destination] = list
        }
        list.entries.append(entry)
        if list.entries.count > maxPerDestination {
            let oldest = list.entries.removeFirst()
            oldest.timer.cancel()
            oldest.connection?.close()
            release(oldest)
        }
    }

    fileprivate func discard(_ entry: PooledConnection) {
        guard entry.connection != nil else { return }  // already taken back or discarded
        entry.timer.cancel()
        entry.connection?.close()
        if let destination = entry.destination, let list = idle[destination] {
            list.entries.removeAll { $0 === entry }
        }
        release(entry)
    }

    private func release(_ entry: PooledConnection) {
        entry.connection = nil
        entry.destination = nil
        if spare.count < 64 { spare.append(entry) }
    }

    func closeAll() {
        for list in idle.values {
            for entry in list.entries {
                entry.timer.cancel()
                entry.connection?.close()
            }
        }
        idle.removeAll()
        spare.removeAll()
    }
}

/// The parked connections to one destination, oldest first (a class, so parking mutates it in
/// place instead of through the dictionary).
private final class IdleList {
    var entries: [PooledConnection] = []
}

/// Watches one parked connection.
private final class PooledConnection: ConnectionDelegate, TimerTarget {
    var connection: Connection?
    var destination: PoolKey?
    /// The pool (its worker's, alive as long as the loop) outlives its watchers.
    unowned(unsafe) let pool: UpstreamPool
    private(set) var timer: Timer!

    init(pool: UpstreamPool, loop: EventLoop) {
        self.pool = pool
        timer = Timer(loop: loop, target: self)
    }

    func connectionReadable(_ connection: Connection) { pool.discard(self) }
    func connectionWritable(_ connection: Connection) {}
    func connectionConnected(_ connection: Connection, error: Errno?) {}
    func connectionFailed(_ connection: Connection, error: ConnectionError) { pool.discard(self) }
    func timerFired(_ timer: Timer) { pool.discard(self) }
}
