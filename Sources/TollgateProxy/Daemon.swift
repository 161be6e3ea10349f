#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization
import TollgateConfig
import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateShipping
import TollgateTLS

/// Starts the workers for a config and runs until SIGTERM/SIGINT has drained them.
public final class Daemon {
    private let config: Config

    public init(config: Config) {
        self.config = config
    }

    /// Why the daemon could not start.
    public enum StartError: Error, CustomStringConvertible {
        case tls(TLSSetupError)
        case rules(ConfigErrors)
        case listen(SystemError)
        case spool(SystemError)
        public var description: String {
            switch self {
            case .tls(let error): return error.description
            case .rules(let errors): return "rules are broken:\n\(errors)"
            case .listen(let error): return error.description
            case .spool(let error): return "elasticsearch spool: \(error)"
            }
        }
    }

    /// The CA and contexts when `ca.cert`/`ca.key` are configured; without them TLS is relayed untouched.
    private func makeTLSEngine() throws(StartError) -> TLSEngine? {
        guard let certificate = config.caCertificate, let key = config.caKey else {
            Log.warning("no ca.cert/ca.key configured: TLS is relayed untouched (create a CA with `tollgate ca init`)")
            return nil
        }
        do {
            let authority = try CertificateAuthority(certificatePath: certificate, keyPath: key,
                                                     cacheCapacity: config.tls.certificateCacheSize)
            return try TLSEngine(authority: authority, upstreamCAFile: config.tls.upstreamCA)
        } catch {
            throw .tls(error)
        }
    }

    /// Re-executes the program once with glibc's per-thread cache of freed chunks raised (see
    /// tg_reexec_with_malloc_tunables), arguments kept. Returns when GLIBC_TUNABLES already
    /// sets the count, for a set-user-ID start, or (with a warning) when it cannot re-execute.
    /// Call before anything else: the process is replaced.
    public static func tuneAllocatorCache() {
        let count: Int32 = 256
        if tg_reexec_with_malloc_tunables(CommandLine.unsafeArgv, count) != 0 {
            Log.warning("could not re-execute with GLIBC_TUNABLES=glibc.malloc.tcache_count=\(count); running with glibc's default cache")
        }
    }

    /// Binds every listener (failing fast if one cannot be bound), then serves. Returns after a drain.
    public func run() throws(StartError) {
        // Connection buffers come and go with every exchange; keep freed memory in the process
        // instead of trimming it back to the kernel each time (madvise and page faults per request).
        tg_keep_freed_memory()
        let tls = try makeTLSEngine()
        // Every address:port Tollgate answers on, with wildcard listeners expanded to this host's
        // addresses: dialling any of them would send a request back into Tollgate.
        let interfaces = localInterfaceAddresses()
        let listeners = config.transparent + config.explicit + (config.admin.map { [$0] } ?? [])
        let ownAddresses = Set(listeners.flatMap { listener -> [SocketAddress] in
            let unspecified = listener.ip == IPAddress(bytes: listener.ip.isV4 ? [0, 0, 0, 0] : [UInt8](repeating: 0, count: 16))
            guard unspecified else { return [listener] }
            return [listener] + interfaces.filter { $0.isV4 == listener.ip.isV4 }.map { SocketAddress(ip: $0, port: listener.port) }
        })
        let fallback = config.agents.map { agent in
            Agent(name: agent.name, sources: agent.sources, groups: [], dailyBudgetUSD: nil,
                  location: SourceLocation(file: "config", line: 1, column: 1))
        }
        let rules: RuleStore
        do {
            rules = try RuleStore(directory: config.rulesDirectory, fallbackAgents: fallback,
                                  ownAddresses: Set(ownAddresses.map(\.ip) + interfaces))
        } catch {
            throw .rules(error)
        }
        if config.rulesDirectory == nil {
            Log.warning("no `rules` directory configured: every flow is allowed (and recorded)")
        }
        // Block the control signals before any thread starts, so only the signalfd sees them.
        let signals = tg_signalfd_for_control_signals()
        let flowLog = FlowLog(path: config.logFile, retentionDays: config.logRetentionDays)
        flowLog.start()
        var shipper: Shipper?
        if let es = config.elasticsearch {
            do { shipper = try Shipper(settings: es) } catch { throw .spool(error) }
            if es.setup {
                // Best effort: records wait in the spool whatever happens here.
                switch IndexSetup.install(es) {
                case .success(let what): Log.info("elasticsearch setup: \(what)")
                case .failure(let error): Log.warning("elasticsearch setup failed (\(error)); run `tollgate es setup` later")
                }
            }
            shipper?.start()
        }
        let resolver = Resolver()
        let settings = ProxySettings(
            limits: config.limits, timeouts: config.timeouts,
            headLimits: HeadLimits(requestLineBytes: config.limits.requestLineBytes, headerBytes: config.limits.headerBytes,
                                   headerCount: config.limits.headerCount),
            ownAddresses: ownAddresses,
            tls: tls, splice: HostPatterns(config.tls.splice), spliceOnClientReject: config.tls.spliceOnClientReject,
            observer: FlowRecord.Observer(hostname: hostName(), version: tollgateVersion),
            redaction: Redaction(extraHeaders: config.redactHeaders), shipper: shipper)

        var workers: [Worker] = []
        do {
            for index in 0..<max(1, config.workers) {
                let loop = try EventLoop(index: index)
                let worker = Worker(loop: loop, settings: settings, flowLog: flowLog, resolver: resolver, policy: rules.policy)
                for address in config.transparent { try worker.listen(on: address, kind: .transparent) }
                for address in config.explicit { try worker.listen(on: address, kind: .explicit) }
                if index == 0, let admin = config.admin { try worker.listen(on: admin, kind: .admin) }
                workers.append(worker)
            }
        } catch {
            throw .listen(error)
        }
        workers[0].metrics = MetricsRenderer(loops: workers.map(\.counters), flowLog: flowLog, tls: tls, shipper: shipper)
        workers[0].rules = rules
        let boundWorkers = UncheckedSendable(workers)
        rules.subscribe { policy in
            for worker in boundWorkers.value {
                let bound = UncheckedSendable(worker)
                worker.loop.execute { bound.value.policy = policy }
            }
        }
        rules.startWatching()
        let running = Atomic<Int>(workers.count)
        for worker in workers {
            let bound = UncheckedSendable(worker)
            startThread(name: "tollgate-loop\(worker.loop.index)") {
                bound.value.loop.run()
                running.subtract(1, ordering: .releasing)
            }
        }
        Log.info("serving: transparent \(config.transparent), explicit \(config.explicit), admin \(config.admin.map { "\($0)" } ?? "none"), \(workers.count) worker(s)")

        waitForTermination(signals, rules: rules)
        Log.info("draining (deadline \(config.timeouts.drain / 1_000_000_000)s)")
        for worker in workers {
            let bound = UncheckedSendable(worker)
            worker.loop.execute {
                let worker = bound.value
                worker.beginDrain { worker.loop.stop() }
            }
        }
        while running.load(ordering: .acquiring) > 0 { usleep(10_000) }
        flowLog.stop()
        shipper?.stop()
        Log.info("stopped")
    }

    /// Blocks the main thread on the signalfd: SIGTERM/SIGINT return (drain), SIGHUP reloads the rules.
    private func waitForTermination(_ signals: CInt, rules: RuleStore) {
        while true {
            let signal = tg_read_signal(signals)
            if signal == SIGTERM || signal == SIGINT { return }
            if signal == SIGHUP { rules.requestReload() }
        }
    }
}

/// The version written into records and printed by `tollgate --version`.
public let tollgateVersion = "0.1.0"

/// This host's name (ECS observer.hostname).
func hostName() -> String {
    var buffer = [CChar](repeating: 0, count: 256)
    guard gethostname(&buffer, buffer.count) == 0 else { return "unknown" }
    return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
