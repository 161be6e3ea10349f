import TollgateHTTP
import TollgateIO
import TollgatePolicy

/// A byte tunnel: CONNECT, an upgraded (101) connection, or a raw TCP relay.
struct TunnelState {
    var record: FlowRecord
    var networkProtocol: FlowRecord.NetworkProtocol
    /// The client's FIN was passed on to the upstream, and vice versa.
    var clientFinished = false
    var upstreamFinished = false
    let startNanoseconds: UInt64
    /// Byte counters of both connections when the tunnel began (an upgrade starts mid-connection).
    let clientBytesBase: (read: Int, written: Int)
}

extension ClientSession {
    /// Relays the connection untouched to the original destination (raw TCP, spliced TLS).
    func startRawRelay(networkProtocol: FlowRecord.NetworkProtocol, decision: Decision) {
        guard let destination = originalDestination else { return close() }
        var record = newRecord(action: .tcpRelay, networkProtocol: networkProtocol)
        record.destinationIP = destination.ip
        record.destinationPort = destination.port
        apply(decision, to: &record)
        if networkProtocol == .tls { worker.counters.increment(.tlsSpliced) }
        tunnel = TunnelState(record: record, networkProtocol: networkProtocol, startNanoseconds: worker.loop.now,
                             clientBytesBase: (0, 0))
        upstreamDestination = destination
        if let ready = preconnected {
            preconnected = nil
            upstream = ready
            return beginTunnel(carrying: nil)
        }
        do {
            let socket = try Socket.connect(to: destination)
            let connection = Connection(socket: socket, loop: worker.loop, connecting: true)
            try connection.start(delegate: self)
            upstream = connection
            phase = .connecting
            timer.arm(after: settings.timeouts.connect)
        } catch {
            upstreamFailed(type: "upstream_connect_failed", message: "connect to \(destination) failed: \(error.errno)", status: 502)
        }
    }

    /// CONNECT reached its target: tell the client, then treat what flows inside like redirected
    /// traffic to that target — sniffed, and HTTP or TLS handled as such (TLS intercepted or spliced).
    func openConnectTunnel() {
        guard let exchange, let upstream else { return }
        exchange.record.statusCode = 200
        client.outbound.append("HTTP/1.1 200 Connection Established\r\nVia: 1.1 tollgate\r\n\r\n" as StaticString)
        finishRecord(&exchange.record, exchange)
        worker.record(&exchange.record)
        self.exchange = nil
        originalDestination = upstreamDestination
        preconnected = upstream
        self.upstream = nil
        phase = .sniffing
        timer.arm(after: settings.timeouts.sniff)
        if !client.inbound.isEmpty { connectionReadable(client) }
    }

    /// The upstream switched protocols (101): record the exchange, then relay both ways.
    func switchToUpgradedTunnel() -> Bool {
        guard let exchange else { return false }
        finishRecord(&exchange.record, exchange)
        var record = exchange.record  // before the worker takes the exchange's own
        worker.record(&exchange.record)
        self.exchange = nil
        record.action = .tunnel
        record.statusCode = nil
        record.method = nil
        beginTunnel(carrying: record)
        return false
    }

    /// Enters tunnel mode; `record` is the flow to complete when the tunnel ends (nil: the raw relay's own).
    func beginTunnel(carrying record: FlowRecord?) {
        if let record {
            tunnel = TunnelState(record: record, networkProtocol: record.networkProtocol, startNanoseconds: worker.loop.now,
                                 clientBytesBase: (client.bytesRead - client.inbound.readableBytes, client.bytesWritten + client.pendingOutput))
        }
        phase = .tunnel
        timer.arm(after: settings.timeouts.idle)
        relay()
    }

    /// Moves bytes both ways within the buffer bound and passes half-closes along.
    func relay() {
        guard phase == .tunnel, var state = tunnel, let upstream else { return }
        let highWater = settings.limits.bufferHighWater
        var moved = false
        if !client.inbound.isEmpty && upstream.pendingOutput < highWater {
            upstream.outbound.append(movingFrom: client.inbound, count: highWater)
            moved = true
        }
        if !upstream.inbound.isEmpty && client.pendingOutput < highWater {
            client.outbound.append(movingFrom: upstream.inbound, count: highWater)
            moved = true
        }
        if client.peerClosed && client.inbound.isEmpty && !state.clientFinished {
            state.clientFinished = true
            upstream.shutdownWriteAfterFlush()
        }
        if upstream.peerClosed && upstream.inbound.isEmpty && !state.upstreamFinished {
            state.upstreamFinished = true
            client.shutdownWriteAfterFlush()
        }
        tunnel = state
        if moved { timer.arm(after: settings.timeouts.idle) }
        if state.clientFinished && state.upstreamFinished {
            upstream.flush()
            client.flush()
            if upstream.pendingOutput == 0 && client.pendingOutput == 0 { finishTunnel(error: nil) }
        }
    }

    /// Writes the tunnel's record (bytes each way) and closes both sides.
    func finishTunnel(error: (type: String, message: String)?) {
        guard var state = tunnel else { return close() }
        tunnel = nil
        state.record.durationNanoseconds = worker.loop.now - state.startNanoseconds
        state.record.sourceBytes = client.bytesRead - state.clientBytesBase.read
        state.record.destinationBytes = client.bytesWritten + client.pendingOutput - state.clientBytesBase.written
        if let error {
            state.record.errorType = error.type
            state.record.errorMessage = error.message
        }
        worker.record(&state.record)
        close()
    }
}
