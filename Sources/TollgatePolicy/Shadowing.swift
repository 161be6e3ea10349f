import TollgateConfig

/// Finds rules that can never match because an earlier rule already matches everything they
/// would (same or wider agents, hosts, ports, methods and paths).
enum Shadowing {
    static func warnings(for rules: [Rule]) -> [ConfigError] {
        var warnings: [ConfigError] = []
        for (index, later) in rules.enumerated() {
            guard let earlier = rules[..<index].first(where: { $0.mode == .enforce && covers($0, later) }) else { continue }
            warnings.append(ConfigError(file: later.location.file, line: later.location.line, column: later.location.column,
                                        message: "warning: rule '\(later.name)' can never match: rule '\(earlier.name)' at \(earlier.location) matches everything it would"))
        }
        return warnings
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
