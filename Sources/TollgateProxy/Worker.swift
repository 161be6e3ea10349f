import TollgateConfig
import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateShipping
import TollgateTLS

/// Settings every session reads, fixed at start-up.
struct ProxySettings: Sendable {
    let limits: Limits
    let timeouts: Timeouts
    let headLimits: HeadLimits
    /// Addresses Tollgate itself listens on: a redirected connection headed there is a loop.
    let ownAddresses: Set<SocketAddress>
    /// Nil when no CA is configured: TLS is then relayed untouched.
    let tls: TLSEngine?
    let splice: HostPatterns
    let spliceOnClientReject: Bool
    let observer: FlowRecord.Observer
    let redaction: Redaction
    /// Nil without `log.elasticsearch`.
    let shipper: Shipper?
}

/// How a client reached Tollgate.
enum ListenerKind: Sendable {
    case transparent, explicit, admin
}

/// One event loop and what lives on it: listeners, sessions, the upstream pool and the DNS cache.
/// Loop-confined: every method runs on `loop`'s thread.
final class Worker: TimerTarget, @unchecked Sendable {  // confined to `loop`'s thread; crossed only via loop.execute
    let loop: EventLoop
    let settings: ProxySettings
    let flowLog: FlowLog
    let resolver: Resolver
    let dnsCache = ResolverCache()
    let pool: UpstreamPool
    let counters = LoopCounters()
    /// The active rules; replaced (on this loop) after a reload. Sessions keep the one they started with.
    var policy: Policy
    /// Set on the loop that serves the admin listener.
    var rules: RuleStore?
    /// Set on the loop that serves the admin listener.
    var metrics: MetricsRenderer?
    private var listeners: [Listener] = []
    private var sessions: [ObjectIdentifier: ClientSession] = [:]
    private(set) var draining = false
    private var drainTimer: Timer?
    private var onDrained: (@Sendable () -> Void)?
    /// Reused for serialising heads and records, so the steady state does not allocate them.
    var scratch: [UInt8] = []
    /// This iteration's records, encoded as `_bulk` lines (documents only without a shipper).
    private var lines: BulkLineWriter
    /// Record ids: a random per-loop prefix and a counter, unique across loops and restarts.
    private let idPrefix = UInt64.random(in: 0...UInt64.max)
    private var idCounter: UInt64 = 0
    /// Records of the current loop iteration, encoded at its end.
    private var pendingRecords: [FlowRecord] = []
    private var refusedWhileLogging = 0

    init(loop: EventLoop, settings: ProxySettings, flowLog: FlowLog, resolver: Resolver, policy: Policy) {
        self.policy = policy
        self.loop = loop
        self.settings = settings
        self.flowLog = flowLog
        self.resolver = resolver
        lines = BulkLineWriter(index: settings.shipper?.index ?? "")
        pool = UpstreamPool(maxPerDestination: settings.limits.upstreamIdlePerDestination, idleTimeout: settings.timeouts.upstreamIdle)
        scratch.reserveCapacity(4096)
        loop.afterEvents = { [unowned self] in encodePendingRecords() }
    }

    func listen(on address: SocketAddress, kind: ListenerKind) throws(SystemError) {
        let listener = try Listener(address: address, loop: loop, reusePort: kind != .admin, onAccept: { [unowned self] socket, peer in
            accepted(socket, peer: peer, kind: kind)
        }, onError: { error in
            Log.warning("accept on \(address): \(error)")
        })
        listeners.append(listener)
    }

    private func accepted(_ socket: Socket, peer: SocketAddress, kind: ListenerKind) {
        if kind != .admin, settings.shipper?.isRefusingConnections == true {
            // on_spool_full: fail_closed — no new traffic until its records can be kept.
            refusedWhileLogging += 1
            if refusedWhileLogging == 1 || refusedWhileLogging % 1000 == 0 {
                Log.error("refusing connection from \(peer): the Elasticsearch spool is full (fail_closed); \(refusedWhileLogging) refused")
            }
            socket.close()
            return
        }
        if kind == .admin {
            AdminSession(socket: socket, loop: loop, metrics: metrics, rules: rules).start()
            return
        }
        counters.increment(.connectionsAccepted)
        counters.increment(.connectionsOpen)
        let connection = Connection(socket: socket, loop: loop, connecting: false)
        let session = ClientSession(worker: self, client: connection, source: peer, policy: policy, kind: kind)
        sessions[ObjectIdentifier(session)] = session
        session.start()
    }

    func sessionEnded(_ session: ClientSession) {
        guard sessions.removeValue(forKey: ObjectIdentifier(session)) != nil else { return }
        counters.increment(.connectionsOpen, by: -1)
        if draining && sessions.isEmpty { finishDrain() }
    }

    /// Takes a flow record into the log pipeline, leaving `FlowRecord.taken` in its place: the
    /// record is moved, not copied (a copy retained every field, and released it twice after).
    func record(_ record: inout FlowRecord) {
        switch record.action {
        case .httpRequest: counters.increment(.requests)
        case .tlsFailed: counters.increment(.tlsFailed)
        case .tlsClientRejectedCertificate: counters.increment(.tlsClientRejected)
        default: break
        }
        // Without a sink nothing reads the document: logging off costs nothing.
        guard flowLog.isEnabled || settings.shipper != nil else { return }
        pendingRecords.append(consume record)
        record = .taken
    }

    /// Encodes the records of this loop iteration and hands them to the sinks: one run of the
    /// encoder for all of them keeps its code and buffers in cache, where encoding each between
    /// the proxy's own events evicted both, and slowed the proxy's code down as well. Records
    /// are encoded straight into the shipper's `_bulk` lines, handed over once per iteration;
    /// the file sink alone gets them once per iteration too, beside the shipper once per record.
    private func encodePendingRecords() {
        guard !pendingRecords.isEmpty else { return }
        let shipper = settings.shipper
        for index in pendingRecords.indices {
            idCounter &+= 1
            let id = RecordID(prefix: idPrefix, counter: idCounter)
            if shipper != nil { lines.beginRecord(timestampMilliseconds: pendingRecords[index].timestampMilliseconds, id: id) }
            let documentStart = lines.writer.count
            // In place (see `encode`): neither copied nor moved out.
            pendingRecords[index].encode(into: &lines.writer, id: id, observer: settings.observer, redaction: settings.redaction)
            if shipper != nil {
                lines.endRecord()
                // Between the shipper's action lines, the file takes each document alone.
                if flowLog.isEnabled { lines.writer.withBytes { flowLog.submit(UnsafeRawBufferPointer(rebasing: $0[documentStart...]), records: 1) } }
            }
        }
        if let shipper {
            shipper.submit(&lines)
        } else {
            lines.writer.withBytes { flowLog.submit($0, records: pendingRecords.count) }
            lines.removeAll()
        }
        pendingRecords.removeAll(keepingCapacity: true)
    }

    /// SIGTERM: stop accepting, let in-flight exchanges finish until `deadline`, then close the rest.
    func beginDrain(onDrained: @escaping @Sendable () -> Void) {
        guard !draining else { return }
        draining = true
        self.onDrained = onDrained
        for listener in listeners { listener.close() }
        listeners.removeAll()
        pool.closeAll()
        for session in Array(sessions.values) { session.drain() }
        if sessions.isEmpty { finishDrain(); return }
        let timer = Timer(loop: loop, target: self)
        timer.arm(after: settings.timeouts.drain)
        drainTimer = timer
    }

    func timerFired(_ timer: Timer) { forceClose() }

    private func forceClose() {
        Log.warning("drain deadline passed on loop \(loop.index): closing \(sessions.count) connection(s)")
        for session in Array(sessions.values) { session.abort(reason: "shutdown", message: "drain deadline passed") }
        if !sessions.isEmpty { sessions.removeAll(); finishDrain() }
    }

    private func finishDrain() {
        drainTimer?.cancel()
        let done = onDrained
        onDrained = nil
        done?()
    }
}
