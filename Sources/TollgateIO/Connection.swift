/// Callbacks from a `Connection` to whatever drives it (a proxy session), on the loop thread.
public protocol ConnectionDelegate: AnyObject {
    /// New bytes are in `inbound`, or the peer finished sending (`peerClosed`).
    func connectionReadable(_ connection: Connection)
    /// Buffered output was written out (the delegate may resume feeding it).
    func connectionWritable(_ connection: Connection)
    /// A pending non-blocking connect finished: `nil` on success.
    func connectionConnected(_ connection: Connection, error: Errno?)
    /// The transport's handshake (TLS) finished; plaintext can flow.
    func connectionHandshakeCompleted(_ connection: Connection)
    /// The connection failed (reset, TLS error...); it is already closed.
    func connectionFailed(_ connection: Connection, error: ConnectionError)
}

extension ConnectionDelegate {
    public func connectionHandshakeCompleted(_ connection: Connection) {}
}

/// One non-blocking TCP socket on a loop with an inbound and an outbound byte queue, optionally
/// through a `Transport` (TLS). The driver decides when it reads (`wantsRead`), which is how
/// backpressure is applied: a side stops reading while the other side's outbound queue is full.
public final class Connection: EventHandler, TimerTarget {
    public let socket: Socket
    /// `unowned(unsafe)`: the loop outlives everything on it, and a checked `unowned` load is an
    /// atomic operation on every use.
    public unowned(unsafe) let loop: EventLoop
    public let inbound: ByteBuffer
    public let outbound: ByteBuffer
    /// Strong while registered; cleared when the connection closes, which breaks the cycle.
    public var delegate: ConnectionDelegate?
    public private(set) var transport: Transport?
    public private(set) var isConnecting: Bool
    public private(set) var isHandshaking = false
    public private(set) var peerClosed = false
    public private(set) var isClosed = false
    /// Plaintext bytes moved, for records.
    public private(set) var bytesRead = 0
    public private(set) var bytesWritten = 0
    /// Whether the driver wants bytes read into `inbound` now.
    public var wantsRead = true { didSet { if wantsRead != oldValue { updateInterest() } } }

    private var registration: Registration?
    private var lingering = false
    private var halfClosePending = false
    private var shutdownPending = false
    /// The transport needs the socket writable (handshake or a write it could not finish) / readable.
    private var transportWantsWrite = false
    private var transportWantsRead = false
    private var lingerTimer: Timer?
    private static let readChunk = 64 * 1024
    /// TLS records carry at most 16 KiB, so each transport read gets that much room.
    private static let transportReadChunk = 17 * 1024
    private static let lingerNanoseconds: UInt64 = 2_000_000_000

    /// Wraps an accepted socket (`connecting: false`) or one with a connect in flight.
    public init(socket: Socket, loop: EventLoop, connecting: Bool) {
        self.socket = socket
        self.loop = loop
        self.isConnecting = connecting
        inbound = ByteBuffer(blocks: loop.blocks)
        outbound = ByteBuffer(blocks: loop.blocks)
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

    /// Puts a transport (TLS) under the queues and starts its handshake; the delegate hears
    /// `connectionHandshakeCompleted` or `connectionFailed`.
    public func startTransport(_ transport: Transport) {
        precondition(self.transport == nil, "transport already started")
        self.transport = transport
        isHandshaking = true
        if !isConnecting { driveHandshake() }
    }

    /// Bytes queued for writing and not yet accepted by the kernel.
    public var pendingOutput: Int { outbound.readableBytes }

    /// Writes as much of `outbound` as the socket takes now; registers for writability otherwise.
    public func flush() {
        guard !isClosed, !isConnecting, !isHandshaking else { return }
        transportWantsWrite = false
        while !outbound.isEmpty {
            let status: TransportStatus
            if let transport {
                status = transport.write(from: outbound)
            } else {
                switch socket.write(from: outbound) {
                case .bytes(let n): status = .done(n)
                case .wouldBlock, .endOfStream: status = .wantWrite
                case .failed(let err): status = .failed(.system(err))
                }
            }
            switch status {
            case .done(let n): bytesWritten += n
            case .wantWrite: updateInterest(); return
            case .wantRead: transportWantsRead = true; updateInterest(); return
            case .closed: fail(.system(.brokenPipe)); return
            case .failed(let error): fail(error); return
            }
        }
        if halfClosePending { halfClosePending = false; sendFIN() }
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
        transport?.close()
        socket.close()
        outbound.removeAll()
        delegate = nil
    }

    /// Sends what is buffered, then FIN, then discards input until the peer closes or a short
    /// linger passes — so an error response is not destroyed by a reset over unread request bytes.
    public func closeGracefully() {
        guard !isClosed, !shutdownPending, !lingering else { return }
        delegate = nil
        if isHandshaking || isConnecting { close(); return }
        shutdownPending = true
        if outbound.isEmpty { beginLinger() } else { flush() }
    }

    /// Half-closes after buffered output (a tunnel relaying the other side's FIN).
    public func shutdownWriteAfterFlush() {
        guard !isClosed else { return }
        if outbound.isEmpty && !isConnecting && !isHandshaking { sendFIN() } else { halfClosePending = true }
    }

    private func sendFIN() {
        transport?.shutdown()
        socket.shutdownWrite()
    }

    private func beginLinger() {
        shutdownPending = false
        lingering = true
        sendFIN()
        inbound.removeAll()
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
            if let error = socket.pendingError() {
                let delegate = self.delegate
                close()
                delegate?.connectionConnected(self, error: error)
                return
            }
            updateInterest()
            delegate?.connectionConnected(self, error: nil)
            if isHandshaking && !isClosed { driveHandshake() } else { flush() }
            return
        }
        if isHandshaking {
            driveHandshake()
            return
        }
        if lingering {
            if events.contains(.readable) || events.contains(.failed) { discardInput() }
            return
        }
        if events.contains(.writable) && !isClosed {
            flush()
            if !isClosed { delegate?.connectionWritable(self) }
        }
        if (events.contains(.readable) || events.contains(.failed)) && !isClosed {
            if (wantsRead || transportWantsRead) && !peerClosed {
                readAvailable()
                if transportWantsRead && !isClosed { transportWantsRead = false; flush() }
            } else if events.contains(.failed) {
                if let error = socket.pendingError() {
                    fail(.system(error))
                } else if peerClosed && outbound.isEmpty {
                    // Both directions ended in order (our FIN and theirs); level-triggered HUP
                    // would repeat forever, so the socket is done: let the driver see it closed.
                    let delegate = self.delegate
                    close()
                    delegate?.connectionReadable(self)
                } else {
                    fail(.system(.connectionReset))
                }
            }
        }
    }

    private func driveHandshake() {
        guard let transport, !isClosed else { return }
        switch transport.handshake() {
        case .done:
            isHandshaking = false
            updateInterest()
            delegate?.connectionHandshakeCompleted(self)
            flush()
            // The peer's first request may have arrived with its last handshake message and
            // been read ahead with it: no readiness event will announce it.
            if !isClosed && wantsRead && transport.hasBufferedInput { readAvailable() }
        case .wantRead:
            transportWantsWrite = false
            updateInterest()
        case .wantWrite:
            transportWantsWrite = true
            updateInterest()
        case .closed:
            fail(.closedDuringHandshake)
        case .failed(let error):
            fail(error)
        }
    }

    private func readAvailable() {
        var gotBytes = false
        if let transport {
            // What the transport read ahead from the socket (at most one receive's worth), then
            // back to epoll rather than a read that would only say EAGAIN.
            while true {
                switch transport.read(into: inbound, max: Self.transportReadChunk) {
                case .done(let n):
                    bytesRead += n
                    gotBytes = true
                    if transport.hasBufferedInput { continue }
                case .wantRead:
                    break
                case .wantWrite:
                    transportWantsWrite = true
                    updateInterest()
                case .closed:
                    peerClosed = true
                    updateInterest()
                    gotBytes = true
                case .failed(let error):
                    fail(error)
                    return
                }
                break
            }
        } else {
            switch socket.read(into: inbound, max: Self.readChunk) {
            case .bytes(let n):
                bytesRead += n
                gotBytes = true
            case .endOfStream:
                peerClosed = true
                updateInterest()
                gotBytes = true
            case .wouldBlock:
                break
            case .failed(let err):
                fail(.system(err))
                return
            }
        }
        if gotBytes { delegate?.connectionReadable(self) }
    }

    private func discardInput() {
        switch socket.read(into: inbound, max: Self.readChunk) {
        case .bytes: inbound.removeAll()
        case .wouldBlock: break
        case .endOfStream, .failed: close()
        }
    }

    private func fail(_ error: ConnectionError) {
        let delegate = self.delegate
        close()
        delegate?.connectionFailed(self, error: error)
    }

    private var currentInterest: Interest {
        if isConnecting { return .write }
        if isHandshaking { return transportWantsWrite ? .write : .read }
        var interest: Interest = []
        if (wantsRead && !peerClosed) || lingering || transportWantsRead { interest.insert(.read) }
        if !outbound.isEmpty || transportWantsWrite { interest.insert(.write) }
        return interest
    }

    private func updateInterest() {
        guard let registration, !isClosed else { return }
        loop.setInterest(registration, currentInterest)
    }
}
