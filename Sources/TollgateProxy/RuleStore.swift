import Synchronization
import TollgateConfig
import TollgateIO
import TollgatePolicy

/// Owns the active rule set: loads and compiles `rules/` off the event loops (at start, on
/// inotify events, SIGHUP and `POST /v1/rules/reload`), then hands the new `Policy` to every
/// loop. A broken edit never takes effect; its located error is kept for `/v1/rules/status`.
public final class RuleStore: Sendable {
    /// What `/v1/rules/status` reports.
    public struct Status: Sendable {
        public var version: String
        public var loadedAt: Int64
        public var rules: Int
        public var agents: Int
        public var lastError: String?
        public var lastErrorAt: Int64?
    }

    private let directory: String?
    private let fallbackAgents: [Agent]
    private let ownAddresses: Set<IPAddress>
    private let state: Mutex<(policy: Policy, status: Status)>
    private let subscribers = Mutex<[@Sendable (Policy) -> Void]>([])
    private let watcher = DirectoryWatcher()
    private let reloadLock = Mutex(())

    /// Loads the rules once; throws when they are broken (Tollgate refuses to start on them).
    public init(directory: String?, fallbackAgents: [Agent], ownAddresses: Set<IPAddress>) throws(ConfigErrors) {
        self.directory = directory
        self.fallbackAgents = fallbackAgents
        self.ownAddresses = ownAddresses
        let policy = try Self.compile(directory: directory, fallbackAgents: fallbackAgents, ownAddresses: ownAddresses)
        state = Mutex((policy, Status(version: policy.version, loadedAt: policy.loadedAt, rules: policy.rules.count,
                                      agents: policy.agents.count, lastError: nil, lastErrorAt: nil)))
    }

    public var policy: Policy { state.withLock { $0.policy } }
    public var status: Status { state.withLock { $0.status } }

    /// `update` runs (on the reload thread) with each newly activated policy.
    public func subscribe(_ update: @escaping @Sendable (Policy) -> Void) { subscribers.withLock { $0.append(update) } }

    /// Parses, validates and compiles the rules; the result is a policy or every located error.
    static func compile(directory: String?, fallbackAgents: [Agent], ownAddresses: Set<IPAddress>) throws(ConfigErrors) -> Policy {
        let now = Int64(wallClockMilliseconds() / 1000)
        guard let directory else { return Policy.allowAll(agents: fallbackAgents) }
        var source = RuleLoader.load(directory: directory)
        if !source.errors.isEmpty { throw ConfigErrors(errors: source.errors) }
        if source.agents.isEmpty { source.agents = fallbackAgents }
        return Policy(source: source, loadedAt: now, ownAddresses: ownAddresses)
    }

    /// Reloads now (on the calling thread, never a loop); returns the error text if the rules are broken.
    @discardableResult
    public func reload() -> String? {
        reloadLock.withLock { _ -> String? in
            let now = Int64(wallClockMilliseconds() / 1000)
            do {
                let policy = try Self.compile(directory: directory, fallbackAgents: fallbackAgents, ownAddresses: ownAddresses)
                let changed = state.withLock { state -> Bool in
                    let changed = state.policy.version != policy.version
                    if changed {
                        state.policy = policy
                        state.status.version = policy.version
                        state.status.loadedAt = policy.loadedAt
                        state.status.rules = policy.rules.count
                        state.status.agents = policy.agents.count
                    }
                    state.status.lastError = nil
                    state.status.lastErrorAt = nil
                    return changed
                }
                if changed {
                    Log.info("rules reloaded: version \(policy.version), \(policy.rules.count) rule(s), \(policy.agents.count) agent(s)")
                    for update in subscribers.withLock({ $0 }) { update(policy) }
                }
                return nil
            } catch {
                let text = "\(error)"
                state.withLock { state in
                    state.status.lastError = text
                    state.status.lastErrorAt = now
                }
                Log.error("rules not reloaded, previous rules stay active:\n\(text)")
                return text
            }
        }
    }

    /// Asks for a reload off the loops (SIGHUP); callable from any thread.
    public func requestReload() { watcher.trigger() }

    /// Watches the directory: every change (and every request) reloads. A half-written file
    /// fails to parse and keeps the old rules; the next complete write is picked up.
    public func startWatching() {
        guard let directory else { return }
        watcher.start(directory: directory) { [self] in reload() }
    }
}
