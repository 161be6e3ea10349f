/// Callbacks from a `Connection` to whatever drives it (a proxy session), on the loop thread.
public protocol ConnectionDelegate: AnyObject {
    /// New bytes are in `inbound`, or the peer finished sending (`peerClosed`).
    func connectionReadable(_ connection: Connection)
    /// Buffered output was written out (the delegate may resume feeding it).
    func connectionWritable(_ connection: Connection)
    /// A pending non-blocking connect finished: `nil` on success.
    func connectionConnected(_ connection: Connection, error: Errno?)
    /// The socket failed (reset, refused mid-stream...); the connection is already closed.
    func connectionFailed(_ connection: Connection, error: Errno)
}

/// One non-blocking TCP socket on a loop with an inbound and an outbound byte queue. The driver
/// decides when it reads (`wantsRead`), which is how backpressure is applied: a side stops
/// reading while the other side's outbound queue is above its high-water mark.
public final class Connection: EventHandler, TimerTarget {
    public let socket: Socket
    public unowned let loop: EventLoop
    public let inbound = ByteBuffer()
    public let outbound = ByteBuffer()
    /// Strong while registered; cleared when the connection closes, which breaks the cycle.
    public var delegate: ConnectionDelegate?
    public private(set) var isConnecting: Bool
    public private(set) var peerClosed = false
    public private(set) var isClosed = false
    public private(set) var bytesRead = 0
    public private(set) var bytesWritten = 0
    /// Whether the driver wants bytes read into `inbound` now.
    public var wantsRead = true { didSet { if wantsRead != oldValue { updateInterest() } } }

    private var registration: Registration?
    private var lingering = false
    private var halfClosePending = false
    private var shutdownPending = false
    private var lingerTimer: Timer?
    private static let readChunk = 64 * 1024
    private static let lingerNanoseconds: UInt64 = 2_000_000_000

    /// Wraps an accepted socket (`connecting: false`) or one with a connect in flight.
    public init(socket: Socket, loop: EventLoop, connecting: Bool) {
        self.socket = socket
        self.loop = loop
        self.isConnecting = connecting
    }

    /// Adds the socket to the loop; on failure the socket is closed.
    public func start(delegate: ConnectionDelegate) throws(SystemError) {
        self.delegate = delegate
        do {
            registration = try loop.register(fd: socket.fd, interest: currentInterest, handler: self)
        } catch {
            self.delegate = nil
            socket.close()
            isClosed = true
            throw error
        }
    }

    /// Bytes queued for writing and not yet accepted by the kernel.
    public var pendingOutput: Int { outbound.readableBytes }

    /// Writes as much of `outbound` as the socket takes now; registers for writability otherwise.
    public func flush() {
        guard !isClosed, !isConnecting else { return }
        while !outbound.isEmpty {
            switch socket.write(from: outbound) {
            case .bytes(let n): bytesWritten += n
            case .wouldBlock, .endOfStream: updateInterest(); return
            case .failed(let err): fail(err); return
            }
        }
        if halfClosePending { halfClosePending = false; socket.shutdownWrite() }
        if shutdownPending { beginLinger() }
        updateInterest()
    }

    /// Closes at once, dropping anything unsent.
    public func close() {
        guard !isClosed else { return }
        isClosed = true
        if let registration { loop.deregister(registration) }
        registration = nil
        lingerTimer?.cancel()
        socket.close()
        outbound.removeAll()
        delegate = nil
    }

    /// Sends what is buffered, then FIN, then discards input until the peer closes or a short
    /// linger passes — so an error response is not destroyed by a reset over unread request bytes.
    public func closeGracefully() {
        guard !isClosed, !shutdownPending, !lingering else { return }
        delegate = nil
        shutdownPending = true
        if outbound.isEmpty && !isConnecting { beginLinger() } else { flush() }
    }

    /// Half-closes after buffered output (a tunnel relaying the other side's FIN).
    public func shutdownWriteAfterFlush() {
        guard !isClosed else { return }
        if outbound.isEmpty && !isConnecting { socket.shutdownWrite() } else { halfClosePending = true }
    }

    private func beginLinger() {
        shutdownPending = false
        lingering = true
        socket.shutdownWrite()
        inbound.removeAll()
        wantsRead = true
        updateInterest()
        let timer = Timer(loop: loop, target: self)
        timer.arm(after: Self.lingerNanoseconds)
        lingerTimer = timer
    }

    public func timerFired(_ timer: Timer) { close() }

    // MARK: Events

    public func handle(_ events: IOEvents) {
        if isConnecting {
            guard events.contains(.writable) || events.contains(.failed) else { return }
            isConnecting = false
            let error = socket.pendingError()
            if let error {
                let delegate = self.delegate
                close()
                delegate?.connectionConnected(self, error: error)
                return
            }
            updateInterest()
            delegate?.connectionConnected(self, error: nil)
            flush()
            return
        }
        if events.contains(.writable) && !isClosed {
            flush()
            if !isClosed { delegate?.connectionWritable(self) }
        }
        if (events.contains(.readable) || events.contains(.failed)) && !isClosed {
            if lingering { discardInput(); return }
            if wantsRead && !peerClosed {
                readOnce()
            } else if events.contains(.failed) {
                if let error = socket.pendingError() {
                    fail(error)
                } else if peerClosed && outbound.isEmpty {
                    // Both directions ended in order (our FIN and theirs); level-triggered HUP
                    // would repeat forever, so the socket is done: let the driver see it closed.
                    let delegate = self.delegate
                    close()
                    delegate?.connectionReadable(self)
                } else {
                    fail(.connectionReset)
                }
            }
        }
    }

    private func readOnce() {
        switch socket.read(into: inbound, max: Self.readChunk) {
        case .bytes(let n):
            bytesRead += n
            delegate?.connectionReadable(self)
        case .endOfStream:
            peerClosed = true
            updateInterest()
            delegate?.connectionReadable(self)
        case .wouldBlock:
            break
        case .failed(let err):
            fail(err)
        }
    }

    private func discardInput() {
        switch socket.read(into: inbound, max: Self.readChunk) {
        case .bytes: inbound.removeAll()
        case .wouldBlock: break
        case .endOfStream, .failed: close()
        }
    }

    private func fail(_ error: Errno) {
        let delegate = self.delegate
        close()
        delegate?.connectionFailed(self, error: error)
    }

    private var currentInterest: Interest {
        if isConnecting { return .write }
        var interest: Interest = []
        if (wantsRead && !peerClosed) || lingering { interest.insert(.read) }
        if !outbound.isEmpty { interest.insert(.write) }
        return interest
    }

    private func updateInterest() {
        guard let registration, !isClosed else { return }
        loop.setInterest(registration, currentInterest)
    }
}
