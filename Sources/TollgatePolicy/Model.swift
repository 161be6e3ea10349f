// TollgatePolicy: operators' rules in, decisions out — pure, no I/O on the decision path.
import TollgateIO

/// What a matching rule does.
public enum RuleAction: String, Sendable {
    case allow, deny, splice
}

/// `enforce` decides; `report` records what the rule would have done and lets the traffic through.
public enum RuleMode: String, Sendable {
    case enforce, report
}

/// Where a rule or agent was written, for messages and `explain`.
public struct SourceLocation: Sendable, Equatable, CustomStringConvertible {
    public let file: String
    public let line: Int
    public let column: Int
    public init(file: String, line: Int, column: Int) {
        self.file = file
        self.line = line
        self.column = column
    }
    public var description: String { "\(file):\(line):\(column)" }
}

/// A host pattern as written in `hosts`.
public enum HostPattern: Sendable, Equatable, CustomStringConvertible {
    /// `github.com` (normalised: lower case, punycode, no trailing dot).
    case exact(String)
    /// `*.githubusercontent.com`: any name strictly below the suffix; stored as `.githubusercontent.com`.
    case suffix(String)
    /// An address or CIDR (`203.0.113.10`, `10.0.0.0/8`).
    case network(CIDRBlock)

    public var description: String {
        switch self {
        case .exact(let name): return name
        case .suffix(let suffix): return "*" + suffix
        case .network(let block): return block.description
        }
    }
}

/// A path glob where `*` matches any run of characters.
public struct PathGlob: Sendable, Equatable, CustomStringConvertible {
    public let pattern: String
    let pieces: [[UInt8]]
    let anchoredStart: Bool
    let anchoredEnd: Bool

    public init(_ pattern: String) {
        self.pattern = pattern
        let bytes = Array(pattern.utf8)
        pieces = bytes.split(separator: UInt8(ascii: "*"), omittingEmptySubsequences: false).map(Array.init)
        anchoredStart = bytes.first != UInt8(ascii: "*")
        anchoredEnd = bytes.last != UInt8(ascii: "*")
    }

    public var matchesEverything: Bool { pattern == "*" || pattern == "/*" }

    /// Greedy-free glob match over bytes: literal pieces in order, `*` between them.
    public func matches(_ path: UnsafeBufferPointer<UInt8>) -> Bool {
        if pieces.count == 1 { return path.elementsEqual(pieces[0]) }
        var position = 0
        for (index, piece) in pieces.enumerated() {
            if piece.isEmpty { continue }
            if index == 0 {
                guard path.count >= piece.count, path.prefix(piece.count).elementsEqual(piece) else { return false }
                position = piece.count
            } else if index == pieces.count - 1 {
                guard path.count - position >= piece.count, path.suffix(piece.count).elementsEqual(piece) else { return false }
                position = path.count
            } else {
                guard let found = find(piece, in: path, from: position) else { return false }
                position = found + piece.count
            }
        }
        return true
    }

    private func find(_ needle: [UInt8], in haystack: UnsafeBufferPointer<UInt8>, from start: Int) -> Int? {
        guard haystack.count - start >= needle.count else { return nil }
        var i = start
        while i + needle.count <= haystack.count {
            if haystack[i] == needle[0] && haystack[i..<(i + needle.count)].elementsEqual(needle) { return i }
            i += 1
        }
        return nil
    }

    public var description: String { pattern }
}

/// One rule, as written by an operator. A class: evaluation touches many rules per decision
/// and must not copy (retain) every field of each.
public final class Rule: Sendable {
    public let name: String
    public let location: SourceLocation
    /// Agent and group names; `*` means every agent.
    public let agents: [String]
    /// nil means any host.
    public let hosts: [HostPattern]?
    public let ports: [UInt16]?
    public let methods: [String]?
    public let paths: [PathGlob]?
    public let action: RuleAction
    public let mode: RuleMode
    /// The rule may reach internal addresses it names explicitly (loopback, RFC 1918...).
    public let allowInternal: Bool

    public init(name: String, location: SourceLocation, agents: [String], hosts: [HostPattern]?, ports: [UInt16]?,
                methods: [String]?, paths: [PathGlob]?, action: RuleAction, mode: RuleMode, allowInternal: Bool) {
        self.name = name
        self.location = location
        self.agents = agents
        self.hosts = hosts
        self.ports = ports
        self.methods = methods
        self.paths = paths
        self.action = action
        self.mode = mode
        self.allowInternal = allowInternal
    }

    /// True when the rule also looks at the request (method or path), so only HTTP can decide it.
    public var hasRequestMatchers: Bool { methods != nil || paths != nil }
}

/// An agent: who it is by source address, and its groups.
public struct Agent: Sendable {
    public let name: String
    public let sources: [CIDRBlock]
    public let groups: [String]
    public let dailyBudgetUSD: Double?
    public let location: SourceLocation

    public init(name: String, sources: [CIDRBlock], groups: [String], dailyBudgetUSD: Double?, location: SourceLocation) {
        self.name = name
        self.sources = sources
        self.groups = groups
        self.dailyBudgetUSD = dailyBudgetUSD
        self.location = location
    }
}
