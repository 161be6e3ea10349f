import TollgateConfig

/// Finds rules that can never match because an earlier rule already matches everything they
/// would (same or wider agents, hosts, ports, methods and paths).
enum Shadowing {
    /// Only earlier rules that could cover a rule's first host are compared with it (found
    /// through the same kind of host index the policy uses), so this stays near-linear.
    static func warnings(for rules: [Rule]) -> [ConfigError] {
        var warnings: [ConfigError] = []
        var exact: [String: [Int]] = [:], suffixes: [String: [Int]] = [:]
        var anyHost: [Int] = [], networks: [Int] = []
        for (index, later) in rules.enumerated() {
            var candidates = anyHost
            switch later.hosts?.first {
            case .exact(let name)?:
                candidates += exact[name] ?? []
                candidates += coveringSuffixes(of: name).flatMap { suffixes[$0] ?? [] }
            case .suffix(let suffix)?:
                candidates += coveringSuffixes(of: String(suffix.dropFirst())).flatMap { suffixes[$0] ?? [] }
                candidates += suffixes[suffix] ?? []
            case .network?:
                candidates += networks
            case nil:
                break
            }
            candidates.sort()
            if let earlier = candidates.lazy.map({ rules[$0] }).first(where: { $0.mode == .enforce && covers($0, later) }) {
                warnings.append(ConfigError(file: later.location.file, line: later.location.line, column: later.location.column,
                                            message: "warning: rule '\(later.name)' can never match: rule '\(earlier.name)' at \(earlier.location) matches everything it would"))
            }
            guard let hosts = later.hosts else { anyHost.append(index); continue }
            for host in hosts {
                switch host {
                case .exact(let name): exact[name, default: []].append(index)
                case .suffix(let suffix): suffixes[suffix, default: []].append(index)
                case .network: if networks.last != index { networks.append(index) }
                }
            }
        }
        return warnings
    }

    /// ".b.c" and ".c" for "a.b.c": the suffix patterns that match the name.
    private static func coveringSuffixes(of name: String) -> [String] {
        var result: [String] = []
        var rest = Substring(name)
        while let dot = rest.firstIndex(of: ".") {
            rest = rest[dot...]
            result.append(String(rest))
            rest = rest.dropFirst()
        }
        return result
    }

    private static func covers(_ a: Rule, _ b: Rule) -> Bool {
        guard a.agents.contains("*") || Set(a.agents).isSuperset(of: b.agents) else { return false }
        if let ports = a.ports { guard let other = b.ports, Set(ports).isSuperset(of: other) else { return false } }
        if let methods = a.methods { guard let other = b.methods, Set(methods).isSuperset(of: other) else { return false } }
        if let paths = a.paths, !paths.contains(where: \.matchesEverything) {
            guard let other = b.paths, Set(paths.map(\.pattern)).isSuperset(of: other.map(\.pattern)) else { return false }
        }
        if a.allowInternal != b.allowInternal && b.allowInternal { return false }
        guard let hosts = a.hosts else { return true }
        guard let other = b.hosts else { return false }
        return other.allSatisfy { host in hosts.contains { covers($0, host) } }
    }

    private static func covers(_ a: HostPattern, _ b: HostPattern) -> Bool {
        switch (a, b) {
        case (.exact(let x), .exact(let y)): return x == y
        case (.suffix(let x), .exact(let y)): return y.hasSuffix(x)
        case (.suffix(let x), .suffix(let y)): return y == x || y.hasSuffix(x)
        case (.network(let x), .network(let y)): return x.prefix <= y.prefix && x.contains(y.network)
        default: return false
        }
    }
}
