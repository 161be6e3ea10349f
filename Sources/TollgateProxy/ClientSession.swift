import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateTLS

/// One client connection and, at any moment, at most one upstream connection: sniffing,
/// HTTP exchanges one at a time (pipelined requests wait their turn), or a byte tunnel.
/// All methods run on the worker's loop.
final class ClientSession: ConnectionDelegate, TimerTarget {
    enum Phase {
        case sniffing, verifyingSplice, awaitingCertificate, tlsHandshake, readingHead, resolving, connecting, exchanging, tunnel, closed
    }

    let worker: Worker
    let client: Connection
    let source: SocketAddress
    /// The rules this connection started under (a reload does not change them mid-flight).
    let policy: Policy
    let agentID: Int?
    let agent: String
    /// A connection-level denial (unknown agent, denied SNI...) answered on the first request.
    var pendingDenial: Decision?
    let kind: ListenerKind
    /// Where the agent's bytes are headed: SO_ORIGINAL_DST, or the target of a CONNECT.
    var originalDestination: SocketAddress?
    var phase: Phase = .readingHead
    var upstream: Connection?
    /// The previous exchange's upstream, between this client's requests.
    var kept: KeptUpstream?
    var upstreamDestination: SocketAddress?
    /// A CONNECT target already dialled, waiting for the sniffed protocol to decide its use.
    var preconnected: Connection?
    /// TLS toward the agent, once a ClientHello was seen.
    var tlsInfo: TLSInfo?
    lazy var timer = Timer(loop: worker.loop, target: self)
    var scanner = HeadScanner()
    var exchange: Exchange?
    var tunnel: TunnelState?
    var draining = false
    /// Backpressure hysteresis per direction.
    private var clientReadThrottled = false
    private var upstreamReadThrottled = false

    init(worker: Worker, client: Connection, source: SocketAddress, policy: Policy, kind: ListenerKind) {
        self.worker = worker
        self.client = client
        self.source = source
        self.policy = policy
        agentID = policy.agent(for: source.ip)
        agent = agentID.map { policy.agents[$0].name } ?? "unknown"
        self.kind = kind
    }

    var settings: ProxySettings { worker.settings }
    var mode: FlowRecord.Mode { kind == .transparent ? .transparent : .explicit }

    func start() {
        do { try client.start(delegate: self) } catch {
            Log.warning("registering client \(source): \(error)")
            worker.sessionEnded(self)
            return
        }
        guard kind == .transparent else {
            phase = .readingHead
            timer.arm(after: settings.timeouts.header)
            return
        }
        let destination = client.socket.originalDestination()
        guard let destination, !isOwnAddress(destination) else {
            rejectLoop(destination)
            return
        }
        originalDestination = destination
        phase = .sniffing
        timer.arm(after: settings.timeouts.sniff)
    }

    /// A connection that reached the listener without a redirect (or redirected to Tollgate itself).
    private func isOwnAddress(_ destination: SocketAddress) -> Bool {
        if settings.ownAddresses.contains(destination) { return true }
        // Without a NAT entry the "original" destination is simply our own socket address.
        return client.socket.localAddress() == destination
    }

    private func rejectLoop(_ destination: SocketAddress?) {
        var record = newRecord(action: .rejected, networkProtocol: .tcp)
        record.destinationIP = destination?.ip
        record.destinationPort = destination?.port
        record.errorType = "loop_detected"
        record.errorMessage = "connection addressed to Tollgate itself; refused"
        worker.record(&record)
        close()
    }

    /// Resolves `host` through the loop's cache or, off the loop, the resolver pool. The
    /// continuation runs on this loop (at once when cached) unless the session moved on meanwhile.
    func lookUp(_ host: String, waitingIn waitPhase: Phase, _ continuation: @escaping (ClientSession, [IPAddress]) -> Void) {
        if let cached = worker.dnsCache.lookup(host, now: worker.loop.now) { return continuation(self, cached) }
        phase = waitPhase
        timer.arm(after: settings.timeouts.connect)
        let boundSession = UncheckedSendable(self), boundContinuation = UncheckedSendable(continuation)
        worker.resolver.resolve(host, on: worker.loop) { addresses in
            let session = boundSession.value, continuation = boundContinuation.value
            session.worker.dnsCache.store(host, addresses, now: session.worker.loop.now)
            guard session.phase == waitPhase else { return }
            continuation(session, addresses)
            session.settle()
        }
    }

    func newRecord(action: FlowRecord.Action, networkProtocol: FlowRecord.NetworkProtocol) -> FlowRecord {
        var record = FlowRecord(start: wallClockMilliseconds(), action: action, source: source,
                                networkProtocol: networkProtocol, agent: agent, mode: mode)
        record.destinationIP = originalDestination?.ip
        record.destinationPort = originalDestination?.port
        if let tlsInfo {
            record.tlsHandling = tlsInfo.handling
            record.tlsServerName = tlsInfo.serverName
            record.tlsVersion = tlsInfo.version
            record.tlsCipher = tlsInfo.cipher
            record.tlsEstablished = tlsInfo.handling == .intercepted ? tlsInfo.version != nil : nil
        }
        return record
    }

    // MARK: Connection events

    func connectionReadable(_ connection: Connection) {
        if connection === kept?.connection {
            // Data or a close from a server with no request outstanding: it cannot be reused.
            kept = nil
            connection.close()
            return
        }
        if connection === client {
            clientReadable()
        } else if connection === preconnected {
            // The CONNECT target spoke first (SSH, SMTP...): nothing to sniff, relay it.
            if phase == .sniffing { relayRawTCP() }
        } else {
            upstreamReadable()
        }
        settle()
    }

    func connectionHandshakeCompleted(_ connection: Connection) {
        if connection === client {
            agentHandshakeCompleted()
        } else if connection === upstream {
            upstreamConnected()
        }
        settle()
    }

    func connectionWritable(_ connection: Connection) {
        // Output drained: whatever was held back for backpressure can move now.
        if connection === client {
            if phase == .exchanging { pumpResponse() } else if phase == .tunnel { relay() }
        } else {
            if phase == .exchanging { pumpRequestBody() } else if phase == .tunnel { relay() }
        }
        settle()
    }

    func connectionConnected(_ connection: Connection, error: Errno?) {
        guard connection === upstream else { return }
        if error == nil && connection.isHandshaking { return }  // TLS next; wait for its handshake
        if let error {
            upstream = nil
            upstreamFailed(type: "upstream_connect_failed", message: "connect to \(upstreamDestination.map { "\($0)" } ?? "?") failed: \(error)", status: 502)
        } else {
            upstreamConnected()
        }
        settle()
    }

    func connectionFailed(_ connection: Connection, error: ConnectionError) {
        if connection === client {
            if phase == .tlsHandshake { agentHandshakeFailed(error) } else {
                abort(reason: "client_reset", message: "client connection failed: \(error)")
            }
            return
        }
        if connection === preconnected { preconnected = nil; return }
        if connection === kept?.connection { kept = nil; return }
        guard connection === upstream else { return }
        upstream = nil
        if phase == .tunnel { finishTunnel(error: ("upstream_reset", "\(error)")); return }
        if phase == .connecting, let tls = connection.transport as? TLSTransport {
            if let failure = tls.verificationFailure {
                upstreamFailed(type: "upstream_certificate_invalid",
                               message: "upstream certificate rejected: \(failure.reason) (\(failure.text))", status: 502)
            } else {
                upstreamFailed(type: "upstream_tls_failed", message: "TLS handshake with the upstream failed: \(error)", status: 502)
            }
        } else {
            upstreamFailed(type: "upstream_reset", message: "upstream connection failed: \(error)", status: 502)
        }
        settle()
    }

    func timerFired(_ timer: Timer) {
        switch phase {
        case .sniffing:
            // Nothing sent yet: a server-speaks-first protocol (SSH, SMTP...). Relay it as raw TCP.
            relayRawTCP()
        case .readingHead:
            if releaseKeptUpstreamIfHoldIsOver() {
                break
            } else if client.inbound.isEmpty && exchangeCount > 0 || client.inbound.isEmpty && draining {
                close()
            } else {
                respondError(status: 408, type: "request_timeout", message: "request head not received in time")
            }
        case .resolving, .connecting:
            upstreamFailed(type: "upstream_timeout", message: "connecting to the upstream timed out", status: 504)
        case .verifyingSplice:
            tlsFailed(type: "dns_timeout", message: "could not resolve the TLS server name in time")
        case .awaitingCertificate, .tlsHandshake:
            tlsFailed(type: "tls_handshake_timeout", message: "TLS handshake with the agent did not finish in time")
        case .exchanging:
            if exchange?.responseHeadSent == false {
                upstreamFailed(type: "upstream_timeout", message: "upstream did not answer in time", status: 504)
            } else {
                abort(reason: "idle_timeout", message: "transfer stalled")
            }
        case .tunnel:
            finishTunnel(error: ("idle_timeout", "tunnel idle"))
        case .closed:
            break
        }
        settle()
    }

    // MARK: Flow control

    /// After every event: flush both sides, move whatever the flush made room for, then apply
    /// backpressure with hysteresis on what is still queued. Flushing first matters: output that
    /// drains right here produces no writable event later, so a side paused on stale numbers
    /// (or bytes left waiting in a buffer) would never be resumed.
    func settle() {
        guard phase != .closed else { return }
        let limits = settings.limits
        upstream?.flush()
        client.flush()
        if phase == .exchanging, let upstream {
            if exchange?.requestComplete == false && !client.inbound.isEmpty && upstream.pendingOutput < limits.bufferHighWater {
                pumpRequestBody()
                upstream.flush()
            }
            if phase == .exchanging && !upstream.inbound.isEmpty && client.pendingOutput < limits.bufferHighWater {
                pumpResponse()
                client.flush()
            }
        } else if phase == .tunnel {
            relay()
            upstream?.flush()
            client.flush()
        }
        guard phase != .closed else { return }
        if let upstream, !upstream.isClosed {
            let pending = upstream.pendingOutput
            if pending >= limits.bufferHighWater { clientReadThrottled = true } else if pending <= limits.bufferLowWater { clientReadThrottled = false }
        } else {
            clientReadThrottled = client.inbound.readableBytes >= limits.bufferHighWater
        }
        let pendingToClient = client.pendingOutput
        if pendingToClient >= limits.bufferHighWater { upstreamReadThrottled = true } else if pendingToClient <= limits.bufferLowWater { upstreamReadThrottled = false }

        switch phase {
        case .sniffing, .readingHead, .tlsHandshake:
            client.wantsRead = true
        case .awaitingCertificate, .verifyingSplice:
            client.wantsRead = false
        case .resolving, .connecting:
            client.wantsRead = client.inbound.readableBytes < limits.bufferHighWater
        case .exchanging:
            if exchange?.requestComplete == true {
                // Pipelined requests wait in the buffer, bounded, until this exchange is done.
                client.wantsRead = client.inbound.readableBytes < 64 * 1024 && !client.peerClosed
            } else {
                client.wantsRead = !clientReadThrottled
            }
        case .tunnel:
            client.wantsRead = !clientReadThrottled
        case .closed:
            break
        }
        if let upstream, !upstream.isClosed { upstream.wantsRead = !upstreamReadThrottled }
    }

    // MARK: Sniffing

    private func clientReadable() {
        switch phase {
        case .sniffing:
            let sniffed = client.inbound.withReadableBytes { SniffedProtocol.classify($0) }
            switch sniffed {
            case .http:
                phase = .readingHead
                timer.arm(after: settings.timeouts.header)
                readRequestHead()
            case .tls:
                handleClientHello()
            case .other:
                relayRawTCP()
            case .undecided:
                // A client that hangs up without sending anything gets no upstream connection.
                if client.peerClosed { client.inbound.isEmpty ? close() : relayRawTCP() }
            }
        case .readingHead:
            readRequestHead()
        case .exchanging:
            pumpRequestBody()
            if let exchange, exchange.requestComplete == false, client.peerClosed {
                abort(reason: "client_closed", message: "client closed before sending the whole request body")
            }
        case .tunnel:
            relay()
        case .resolving, .connecting:
            if client.peerClosed && exchange?.requestComplete == false && client.inbound.isEmpty {
                abort(reason: "client_closed", message: "client closed before the request was sent")
            }
        case .awaitingCertificate, .verifyingSplice, .tlsHandshake, .closed:
            break
        }
    }

    private func upstreamReadable() {
        switch phase {
        case .exchanging: pumpResponse()
        case .tunnel: relay()
        default: break
        }
    }

    // MARK: Ending

    /// SIGTERM: idle connections close now; busy ones close after the current exchange.
    func drain() {
        draining = true
        if phase == .readingHead && client.inbound.isEmpty { close() }
    }

    /// Tears everything down, recording the in-flight exchange (if any) as failed.
    func abort(reason: String, message: String) {
        if var record = exchange?.record {
            record.errorType = reason
            record.errorMessage = message
            finishRecord(&record)
            worker.record(&record)
            exchange = nil
        }
        if tunnel != nil { finishTunnel(error: (reason, message)); return }
        upstream?.close()
        upstream = nil
        close()
    }

    /// Closes the client (gracefully, so queued bytes go out) and leaves the worker.
    func close() {
        guard phase != .closed else { return }
        phase = .closed
        timer.cancel()
        upstream?.close()
        upstream = nil
        releaseKeptUpstream()
        preconnected?.close()
        preconnected = nil
        client.closeGracefully()
        worker.sessionEnded(self)
    }

    var exchangeCount = 0
}
