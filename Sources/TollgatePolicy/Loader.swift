#if canImport(Glibc)
import Glibc
#endif
import TollgateConfig
import TollgateIO

/// Everything read from a rules directory: agents and rules in evaluation order, plus what is
/// wrong with them. A rule set with errors is never used.
public struct RuleSource: Sendable {
    public var agents: [Agent] = []
    public var rules: [Rule] = []
    public var errors: [ConfigError] = []
    public var warnings: [ConfigError] = []
    /// A digest of the files' bytes, so operators can tell which version is active.
    public var contentHash: String = ""
    public var files: [String] = []
}

public enum RuleLoader {
    /// Reads every `*.yaml` file in `directory` in lexical order.
    public static func load(directory: String) -> RuleSource {
        var source = RuleSource()
        let names: [String]
        do { names = try yamlFiles(in: directory) } catch {
            source.errors.append(ConfigError(file: directory, line: 1, column: 1, message: error.description))
            return source
        }
        var texts: [(String, String)] = []
        for name in names {
            let path = directory.hasSuffix("/") ? directory + name : directory + "/" + name
            do { texts.append((path, try readTextFile(path))) } catch {
                source.errors.append(ConfigError(file: path, line: 1, column: 1, message: "cannot read: \(error.reason)"))
            }
        }
        var loaded = parse(files: texts)
        loaded.errors.insert(contentsOf: source.errors, at: 0)
        return loaded
    }

    /// Parses and validates already-read files (path, text), in the given order.
    public static func parse(files: [(String, String)]) -> RuleSource {
        var source = RuleSource()
        var hasher = FNV1a()
        var ruleNodes: [(YAMLValue, String)] = []
        for (path, text) in files {
            source.files.append(path)
            hasher.add(path)
            hasher.add(text)
            let root: YAMLValue?
            do { root = try YAMLValue.parse(text, file: path) } catch {
                source.errors.append(error)
                continue
            }
            guard let root else { continue }
            for (key, value) in root.mapping(allowed: ["agents", "rules"], errors: &source.errors, context: "rules file") {
                if key == "agents" {
                    source.agents += readAgents(value, &source.errors)
                } else if case .sequence(let sequence) = value.node {
                    ruleNodes += sequence.map { (YAMLValue(node: $0, file: path), path) }
                } else {
                    source.errors.append(value.error("rules must be a list of rules"))
                }
            }
        }
        source.contentHash = hasher.hex
        let known = knownNames(source.agents, &source.errors)
        var names: [String: SourceLocation] = [:]
        for (node, _) in ruleNodes {
            let (name, rule) = readRule(node, known: known, &source.errors)
            guard let name else { continue }
            if let previous = names[name] {
                source.errors.append(node.error("duplicate rule name '\(name)' (first defined at \(previous))"))
                continue
            }
            names[name] = SourceLocation(file: node.file, line: node.line, column: node.column)
            if let rule { source.rules.append(rule) }
        }
        source.warnings = Shadowing.warnings(for: source.rules)
        // Operators fix files top to bottom: report in file, line, column order.
        source.errors.sort { ($0.file, $0.line, $0.column) < ($1.file, $1.line, $1.column) }
        return source
    }

    private static func yamlFiles(in directory: String) throws(FileReadError) -> [String] {
        guard let dir = opendir(directory) else { throw FileReadError(path: directory, reason: String(cString: strerror(errno))) }
        defer { closedir(dir) }
        var names: [String] = []
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            // Editors' temporaries (.x.yaml.swp, x.yaml~) and hidden files are not rules.
            if name.hasSuffix(".yaml") && !name.hasPrefix(".") { names.append(name) }
        }
        return names.sorted()
    }

    private static func readAgents(_ value: YAMLValue, _ errors: inout [ConfigError]) -> [Agent] {
        value.namedMapping(errors: &errors, context: "agents").compactMap { name, body in
            var sources: [CIDRBlock] = [], groups: [String] = []
            var budget: Double?
            let allowed: Set<String> = ["sources", "groups", "daily_budget_usd"]
            for (key, item) in body.mapping(allowed: allowed, errors: &errors, context: "agent '\(name)'") {
                switch key {
                case "sources":
                    for (text, node) in item.stringList(errors: &errors, context: "agents.\(name).sources") {
                        if let block = CIDRBlock(parsing: text) { sources.append(block) } else {
                            errors.append(node.error("agents.\(name).sources: '\(text)' is not an IP address or CIDR"))
                        }
                    }
                case "groups":
                    groups = item.stringList(errors: &errors, context: "agents.\(name).groups").map(\.0)
                default:
                    if case .scalar(let scalar) = item.node, let number = Double(scalar.string), number >= 0 { budget = number } else {
                        errors.append(item.error("agents.\(name).daily_budget_usd must be a non-negative number"))
                    }
                }
            }
            if sources.isEmpty { errors.append(body.error("agent '\(name)' needs at least one source address")) }
            return Agent(name: name, sources: sources, groups: groups, dailyBudgetUSD: budget,
                         location: SourceLocation(file: body.file, line: body.line, column: body.column))
        }
    }

    /// Agent and group names a rule may refer to.
    private static func knownNames(_ agents: [Agent], _ errors: inout [ConfigError]) -> Set<String> {
        var seen: [String: SourceLocation] = [:]
        var names = Set<String>()
        for agent in agents {
            if let first = seen[agent.name] {
                errors.append(ConfigError(file: agent.location.file, line: agent.location.line, column: agent.location.column,
                                          message: "agent '\(agent.name)' is defined twice (first at \(first))"))
            }
            seen[agent.name] = agent.location
            names.insert(agent.name)
            names.formUnion(agent.groups)
        }
        return names
    }

    /// The rule's name (for duplicate detection even when the rule is broken) and the rule if valid.
    private static func readRule(_ node: YAMLValue, known: Set<String>, _ errors: inout [ConfigError]) -> (String?, Rule?) {
        let allowed: Set<String> = ["name", "agents", "hosts", "ports", "methods", "paths", "action", "mode", "allow_internal"]
        let fields = node.mapping(allowed: allowed, errors: &errors, context: "rule")
        let before = errors.count
        var name: String?, agents: [String] = [], hosts: [HostPattern]?, ports: [UInt16]?, methods: [String]?
        var paths: [PathGlob]?, action: RuleAction?, mode = RuleMode.enforce, allowInternal = false
        var actionNode: YAMLValue?
        for (key, item) in fields {
            switch key {
            case "name":
                name = item.string(errors: &errors, context: "rule name")
            case "agents":
                for (text, entry) in item.stringList(errors: &errors, context: "agents") {
                    if text != "*" && !known.contains(text) {
                        errors.append(entry.error("unknown agent or group '\(text)'"))
                    }
                    agents.append(text)
                }
            case "hosts":
                hosts = item.stringList(errors: &errors, context: "hosts").compactMap { text, entry in
                    switch HostNames.pattern(text) {
                    case .success(let pattern): return pattern
                    case .failure(let problem):
                        errors.append(entry.error("bad host '\(text)': \(problem.message)"))
                        return nil
                    }
                }
            case "ports":
                ports = item.stringList(errors: &errors, context: "ports").compactMap { text, entry in
                    guard let port = UInt16(text), port > 0 else {
                        errors.append(entry.error("bad port '\(text)': expected 1-65535"))
                        return nil
                    }
                    return port
                }
            case "methods":
                methods = item.stringList(errors: &errors, context: "methods").compactMap { text, entry in
                    let upper = text.uppercased()
                    guard !upper.isEmpty, upper.utf8.allSatisfy({ $0 >= 0x41 && $0 <= 0x5A }) else {
                        errors.append(entry.error("bad method '\(text)'"))
                        return nil
                    }
                    return upper
                }
            case "paths":
                paths = item.stringList(errors: &errors, context: "paths").compactMap { text, entry in
                    guard text.hasPrefix("/") || text == "*" else {
                        errors.append(entry.error("bad path glob '\(text)': must start with '/' (or be '*')"))
                        return nil
                    }
                    guard !text.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else {
                        errors.append(entry.error("bad path glob '\(text)': spaces and control characters are not allowed"))
                        return nil
                    }
                    return PathGlob(text)
                }
            case "action":
                actionNode = item
                if let text = item.string(errors: &errors, context: "action") {
                    action = RuleAction(rawValue: text)
                    if action == nil { errors.append(item.error("bad action '\(text)': expected allow, deny or splice")) }
                }
            case "mode":
                if let text = item.string(errors: &errors, context: "mode") {
                    if let parsed = RuleMode(rawValue: text) { mode = parsed } else {
                        errors.append(item.error("bad mode '\(text)': expected enforce or report"))
                    }
                }
            default:
                allowInternal = item.bool(errors: &errors, context: "allow_internal") ?? false
            }
        }
        if name == nil { errors.append(node.error("rule needs a name")) }
        if agents.isEmpty && !fields.contains(where: { $0.0 == "agents" }) { errors.append(node.error("rule '\(name ?? "?")' needs agents (a list, or [\"*\"])")) }
        if action == nil && actionNode == nil { errors.append(node.error("rule '\(name ?? "?")' needs an action (allow, deny or splice)")) }
        if action == .splice && (methods != nil || paths != nil) {
            errors.append((actionNode ?? node).error("rule '\(name ?? "?")': splice happens before interception, so it cannot have methods or paths"))
        }
        guard errors.count == before, let name, let action else { return (name, nil) }
        return (name, Rule(name: name, location: SourceLocation(file: node.file, line: node.line, column: node.column),
                    agents: agents, hosts: hosts, ports: ports, methods: methods, paths: paths,
                    action: action, mode: mode, allowInternal: allowInternal))
    }
}

/// A 64-bit FNV-1a digest (the rule set's version label; not a security hash).
struct FNV1a {
    private var state: UInt64 = 0xcbf2_9ce4_8422_2325
    mutating func add(_ text: String) {
        for byte in text.utf8 { state = (state ^ UInt64(byte)) &* 0x100_0000_01b3 }
        state = (state ^ 0xff) &* 0x100_0000_01b3
    }
    var hex: String {
        let digits = String(state, radix: 16)
        return String(repeating: "0", count: 16 - digits.count) + digits
    }
}
