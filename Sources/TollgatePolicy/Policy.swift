import TollgateIO

/// What Tollgate does with a flow, and which rule said so.
public struct Decision: Sendable, Equatable {
    public enum Verdict: String, Sendable {
        /// Let it through (after interception for TLS).
        case allow
        case deny
        /// Relay TLS untouched.
        case splice
        /// A report-mode rule matched: the traffic passes, the record says what would have happened.
        case report
    }

    public let verdict: Verdict
    /// Index into `Policy.rules`, nil for the default and for built-in refusals.
    public let ruleIndex: Int?
    /// Machine-readable: `rule`, `default_deny`, `unknown_agent`, `internal_address`, ...
    public let reason: String
    /// The rule matched the host by name (not by address): the name is only as good as its
    /// binding to the destination, which the caller must check when nothing else proves it.
    public let matchedByName: Bool

    public init(verdict: Verdict, ruleIndex: Int?, reason: String, matchedByName: Bool = false) {
        self.verdict = verdict
        self.ruleIndex = ruleIndex
        self.reason = reason
        self.matchedByName = matchedByName
    }

    public var allowsTraffic: Bool { verdict != .deny }
}

/// A compiled, immutable rule set: rules indexed by exact host, host suffix, address block and
/// "any host", each list in evaluation order, plus a per-rule agent bitmap. Evaluation walks
/// only the candidate lists for the query's host and allocates nothing.
public final class Policy: Sendable {
    public let rules: [Rule]
    public let agents: [Agent]
    public let version: String
    /// Unix seconds when this rule set was compiled.
    public let loadedAt: Int64
    /// Whether rules were configured at all; without them every flow is allowed (documented).
    public let enforcing: Bool
    /// Tollgate's own addresses: always internal.
    private let ownAddresses: Set<IPAddress>

    private let agentBySource: [IPAddress: Int]
    private let agentBlocks: [(CIDRBlock, Int)]
    private let agentIDs: [String: Int]
    private let words: Int
    /// Per rule: which agents it applies to (bit per agent id), or nil for every agent.
    private let ruleAgents: [[UInt64]?]
    private let exactHosts: [UInt64: [Int32]]
    private let hostSuffixes: [UInt64: [Int32]]
    private let networkRules: [Int32]
    private let anyHostRules: [Int32]

    /// Compiles a validated rule source (callers check `errors` first).
    public init(source: RuleSource, loadedAt: Int64, enforcing: Bool = true, ownAddresses: Set<IPAddress> = []) {
        self.ownAddresses = ownAddresses
        rules = source.rules
        agents = source.agents
        version = source.contentHash
        self.loadedAt = loadedAt
        self.enforcing = enforcing
        var ids: [String: Int] = [:]
        var bySource: [IPAddress: Int] = [:]
        var blocks: [(CIDRBlock, Int)] = []
        for (index, agent) in source.agents.enumerated() {
            ids[agent.name] = index
            for block in agent.sources {
                if block.prefix == (block.network.isV4 ? 32 : 128) { bySource[block.network] = index } else { blocks.append((block, index)) }
            }
        }
        agentIDs = ids
        agentBySource = bySource
        agentBlocks = blocks.sorted { $0.0.prefix > $1.0.prefix }
        let words = max(1, (source.agents.count + 63) / 64)
        self.words = words
        var groupMembers: [String: [Int]] = [:]
        for (index, agent) in source.agents.enumerated() { for group in agent.groups { groupMembers[group, default: []].append(index) } }
        ruleAgents = source.rules.map { rule in
            if rule.agents.contains("*") { return nil }
            var bits = [UInt64](repeating: 0, count: words)
            for name in rule.agents {
                for member in (ids[name].map { [$0] } ?? []) + (groupMembers[name] ?? []) {
                    bits[member / 64] |= 1 << UInt64(member % 64)
                }
            }
            return bits
        }
        var exact: [UInt64: [Int32]] = [:], suffixes: [UInt64: [Int32]] = [:]
        var networks: [Int32] = [], anyHost: [Int32] = []
        for (index, rule) in source.rules.enumerated() {
            let id = Int32(index)
            guard let hosts = rule.hosts else { anyHost.append(id); continue }
            var addedNetwork = false
            for host in hosts {
                switch host {
                case .exact(let name): appendOnce(&exact[hostHash(name), default: []], id)
                case .suffix(let suffix): appendOnce(&suffixes[hostHash(suffix), default: []], id)
                case .network: if !addedNetwork { networks.append(id); addedNetwork = true }
                }
            }
        }
        exactHosts = exact
        hostSuffixes = suffixes
        networkRules = networks
        anyHostRules = anyHost
    }

    /// A policy that allows everything: used when no rules directory is configured.
    public static func allowAll(agents: [Agent]) -> Policy {
        var source = RuleSource()
        source.agents = agents
        source.contentHash = "none"
        return Policy(source: source, loadedAt: 0, enforcing: false)
    }

    // MARK: Agents

    /// The agent id for a source address (most specific source wins), or nil.
    public func agent(for source: IPAddress) -> Int? {
        if let exact = agentBySource[source] { return exact }
        return agentBlocks.first { $0.0.contains(source) }?.1
    }

    public func agentID(named name: String) -> Int? { agentIDs[name] }

    // MARK: Decisions

    /// Before interception: what to do with a TLS (or raw TCP) connection to `host`/`ip`:`port`.
    /// Rules with methods or paths cannot be decided yet, so they mean "intercept and see".
    public func connectionDecision(agent: Int?, host: String?, ip: IPAddress, port: UInt16, rawTCP: Bool) -> Decision {
        guard enforcing else { return Decision(verdict: .allow, ruleIndex: nil, reason: "no_rules") }
        guard let agent else { return Decision(verdict: .deny, ruleIndex: nil, reason: "unknown_agent") }
        let found = firstRule(agent: agent, host: host, ip: ip, port: port) { rule, hostMatchedByAddress in
            // Raw TCP is allowed only by a rule naming its address; request rules cannot decide it.
            rawTCP ? hostMatchedByAddress && !rule.hasRequestMatchers : true
        }
        guard let (index, _) = found else { return Decision(verdict: .deny, ruleIndex: nil, reason: "default_deny") }
        let rule = rules[index]
        let decision: Decision
        if rule.mode == .report {
            decision = Decision(verdict: .report, ruleIndex: index, reason: "report:\(rule.action.rawValue)")
        } else if rule.hasRequestMatchers {
            decision = Decision(verdict: .allow, ruleIndex: index, reason: "request_rules")
        } else {
            switch rule.action {
            case .splice: decision = Decision(verdict: rawTCP ? .allow : .splice, ruleIndex: index, reason: "rule")
            case .allow: decision = Decision(verdict: .allow, ruleIndex: index, reason: "rule")
            case .deny: decision = Decision(verdict: .deny, ruleIndex: index, reason: "rule")
            }
        }
        return addressSafety(decision, agent: agent, ip: ip, port: port)
    }

    /// Whatever a rule allowed, internal addresses stay closed unless a rule names them with
    /// `allow_internal: true` (a deny keeps its rule, so `explain` shows the operator's reason).
    private func addressSafety(_ decision: Decision, agent: Int, ip: IPAddress, port: UInt16) -> Decision {
        guard decision.verdict != .deny, let (class_, allowed) = internalCheck(agent: agent, ip: ip, port: port), !allowed else {
            return decision
        }
        return Decision(verdict: .deny, ruleIndex: nil, reason: "internal_address:\(class_)")
    }

    /// For each HTTP request (plain, or inside intercepted TLS).
    public func requestDecision(agent: Int?, host: String?, ip: IPAddress, port: UInt16, method: String, path: String) -> Decision {
        guard enforcing else { return Decision(verdict: .allow, ruleIndex: nil, reason: "no_rules") }
        guard let agent else { return Decision(verdict: .deny, ruleIndex: nil, reason: "unknown_agent") }
        func search(_ bytes: UnsafeBufferPointer<UInt8>) -> (index: Int, byName: Bool)? {
            // Paths match without the query string or fragment.
            var end = 0
            while end < bytes.count && bytes[end] != UInt8(ascii: "?") && bytes[end] != UInt8(ascii: "#") { end += 1 }
            let pathOnly = UnsafeBufferPointer(rebasing: bytes[..<end])
            return firstRule(agent: agent, host: host, ip: ip, port: port) { rule, _ in
                if let methods = rule.methods, !methods.contains(method) { return false }
                if let paths = rule.paths, !paths.contains(where: { $0.matches(pathOnly) }) { return false }
                return true
            }
        }
        var path = path
        let found = path.withUTF8(search)
        guard let (index, byName) = found else { return Decision(verdict: .deny, ruleIndex: nil, reason: "default_deny") }
        let rule = rules[index]
        if rule.mode == .report {
            return addressSafety(Decision(verdict: .report, ruleIndex: index, reason: "report:\(rule.action.rawValue)", matchedByName: byName),
                                 agent: agent, ip: ip, port: port)
        }
        return addressSafety(Decision(verdict: rule.action == .deny ? .deny : .allow, ruleIndex: index, reason: "rule", matchedByName: byName),
                             agent: agent, ip: ip, port: port)
    }

    /// Address safety: nil for a global address; else its class and whether a rule naming it
    /// explicitly with `allow_internal: true` lets this agent reach it.
    public func internalCheck(agent: Int, ip: IPAddress, port: UInt16) -> (String, Bool)? {
        guard let class_ = AddressSafety.internalClass(ip, own: ownAddresses) else { return nil }
        for id in networkRules {
            let rule = rules[Int(id)]
            guard rule.allowInternal, rule.action != .deny, appliesTo(Int(id), agent: agent),
                  rule.ports.map({ $0.contains(port) }) ?? true else { continue }
            if rule.hosts?.contains(where: { if case .network(let block) = $0 { return block.contains(ip) } else { return false } }) == true {
                return (class_, true)
            }
        }
        return (class_, false)
    }

    // MARK: Matching

    /// The lowest-numbered rule that applies to the agent, port and host (or address) and passes
    /// `accept`; `accept` learns whether the host matched through an address pattern.
    private func firstRule(agent: Int, host: String?, ip: IPAddress, port: UInt16, accept: (Rule, Bool) -> Bool) -> (index: Int, byName: Bool)? {
        var best = Int32.max
        var bestByName = false
        func scan(_ list: [Int32]?, byAddress: Bool = false, byName: Bool = false) {
            guard let list else { return }
            for id in list {
                if id >= best { return }
                let rule = rules[Int(id)]
                guard appliesTo(Int(id), agent: agent), rule.ports.map({ $0.contains(port) }) ?? true else { continue }
                guard hostMatches(rule, host: host, ip: ip, byAddress: byAddress) else { continue }
                if accept(rule, byAddress) {
                    best = id
                    bestByName = byName
                    return
                }
            }
        }
        if let host {
            var host = host
            host.withUTF8 { bytes in
                scan(exactHosts[hostHash(bytes)], byName: true)
                // Every proper suffix starting at a dot: "a.b.example.com" -> ".b.example.com", ".example.com", ".com".
                var index = 1
                while index < bytes.count {
                    if bytes[index] == UInt8(ascii: ".") {
                        scan(hostSuffixes[hostHash(UnsafeBufferPointer(rebasing: bytes[index...]))], byName: true)
                    }
                    index += 1
                }
            }
        }
        scan(networkRules, byAddress: true)
        scan(anyHostRules)
        return best == Int32.max ? nil : (Int(best), bestByName)
    }

    private func hostMatches(_ rule: Rule, host: String?, ip: IPAddress, byAddress: Bool) -> Bool {
        guard let hosts = rule.hosts else { return true }
        for pattern in hosts {
            switch pattern {
            case .exact(let name): if !byAddress, let host, host == name { return true }
            case .suffix(let suffix): if !byAddress, let host, host.hasSuffix(suffix) { return true }
            case .network(let block): if byAddress && block.contains(ip) { return true }
            }
        }
        return false
    }

    private func appliesTo(_ rule: Int, agent: Int) -> Bool {
        guard let bits = ruleAgents[rule] else { return true }
        return bits[agent / 64] & (1 << UInt64(agent % 64)) != 0
    }
}

private func appendOnce(_ list: inout [Int32], _ id: Int32) {
    if list.last != id { list.append(id) }
}

/// FNV-1a over the host bytes: the index key, so lookups of a host's suffixes need no String.
func hostHash(_ bytes: UnsafeBufferPointer<UInt8>) -> UInt64 {
    var state: UInt64 = 0xcbf2_9ce4_8422_2325
    for byte in bytes { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
    return state
}

func hostHash(_ text: String) -> UInt64 {
    var text = text
    return text.withUTF8 { hostHash($0) }
}
