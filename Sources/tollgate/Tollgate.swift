// tollgate: the command line — run the proxy, validate its config.
import ArgumentParser
import TollgateConfig
import TollgateIO
import TollgatePolicy
import TollgateProxy
import TollgateShipping
import TollgateTLS

@main
struct Tollgate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A transparent egress proxy with a policy engine for coding agents.",
        version: tollgateVersion,
        subcommands: [Run.self, CheckConfig.self, Check.self, Explain.self, CA.self, ES.self])
}

/// `tollgate run --config FILE`
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy in the foreground.")

    @Option(name: .long, help: "Path to the YAML config file.")
    var config: String

    func run() throws {
        Daemon.tuneAllocatorCache()  // first: it may replace the process
        let loaded = try loadConfig(config)
        do {
            try Daemon(config: loaded).run()
        } catch {
            printError("tollgate: cannot start: \(error)")
            throw ExitCode(1)
        }
    }
}

/// `tollgate check-config --config FILE`
struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate a config file and exit.")

    @Option(name: .long, help: "Path to the YAML config file.")
    var config: String

    func run() throws {
        _ = try loadConfig(config)
        print("\(config): ok")
    }
}

/// `tollgate check [--rules DIR]`: validates the rules without starting anything.
struct Check: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Validate the rules directory: errors and shadowed rules.")
    @Option(name: .long, help: "The rules directory.") var rules = "rules"

    func run() throws {
        let source = RuleLoader.load(directory: rules)
        for error in source.errors { print(error.description) }
        for warning in source.warnings { print(warning.description) }
        if !source.errors.isEmpty { throw ExitCode(1) }
        if source.warnings.isEmpty { print("\(rules): \(source.rules.count) rule(s), \(source.agents.count) agent(s), ok") }
    }
}

/// `tollgate explain`: the decision the proxy would make for a request, and why.
struct Explain: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Show which rule decides a request, using the proxy's engine.")
    @Option(name: .long, help: "The rules directory.") var rules = "rules"
    @Option(name: .long, help: "Agent name.") var agent: String?
    @Option(name: .long, help: "Source address (instead of --agent).") var source: String?
    @Option(name: .long, help: "HTTP method.") var method = "GET"
    @Option(name: .long, help: "Destination address, when the URL names a host (default: the host if it is an address, else 203.0.113.1).")
    var address: String?
    @Argument(help: "URL, e.g. https://github.com/org/repo") var url: String

    func run() throws {
        let loaded = RuleLoader.load(directory: rules)
        if !loaded.errors.isEmpty {
            for error in loaded.errors { printError(error.description) }
            throw ExitCode(1)
        }
        let policy = Policy(source: loaded, loadedAt: 0)
        let agentID: Int?
        if let agent {
            guard let id = policy.agentID(named: agent) else {
                printError("unknown agent '\(agent)'")
                throw ExitCode(1)
            }
            agentID = id
        } else if let source {
            guard let ip = IPAddress(parsing: source) else {
                printError("--source must be an IP address")
                throw ExitCode(1)
            }
            agentID = policy.agent(for: ip)
        } else {
            printError("give --agent NAME or --source IP")
            throw ExitCode(1)
        }
        guard let target = ExplainTarget(url: url) else {
            printError("cannot parse URL '\(url)' (expected http://, https:// or tcp://host:port)")
            throw ExitCode(1)
        }
        let ip = IPAddress(parsing: address ?? target.host) ?? IPAddress(parsing: "203.0.113.1")!
        let host = IPAddress(parsing: target.host) == nil ? HostNames.normalize(target.host) : nil
        let decision: Decision
        if target.scheme == "tcp" {
            decision = policy.connectionDecision(agent: agentID, host: nil, ip: ip, port: target.port, rawTCP: true)
        } else {
            if target.scheme == "https" {
                let connection = policy.connectionDecision(agent: agentID, host: host, ip: ip, port: target.port, rawTCP: false)
                if connection.verdict == .splice || connection.verdict == .deny {
                    print(describe(connection, policy: policy, stage: "connection"))
                    return
                }
            }
            decision = policy.requestDecision(agent: agentID, host: host, ip: ip, port: target.port, method: method.uppercased(), path: target.path)
        }
        print(describe(decision, policy: policy, stage: target.scheme == "tcp" ? "connection" : "request"))
    }

    private func describe(_ decision: Decision, policy: Policy, stage: String) -> String {
        var lines = ["decision: \(decision.verdict.rawValue) (\(stage) level)"]
        if let index = decision.ruleIndex {
            let rule = policy.rules[index]
            lines.append("rule:     \(rule.name) at \(rule.location)")
            lines.append("action:   \(rule.action.rawValue), mode \(rule.mode.rawValue)")
        }
        lines.append("reason:   \(decision.reason)")
        return lines.joined(separator: "\n")
    }
}

/// A URL given to `explain`.
struct ExplainTarget {
    let scheme: String
    let host: String
    let port: UInt16
    let path: String

    init?(url: String) {
        guard let schemeEnd = url.range(of: "://") else { return nil }
        scheme = url[..<schemeEnd.lowerBound].lowercased()
        let defaultPort: UInt16
        switch scheme {
        case "http": defaultPort = 80
        case "https": defaultPort = 443
        case "tcp": defaultPort = 0
        default: return nil
        }
        let rest = url[schemeEnd.upperBound...]
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        var authority = String(rest[..<slash])
        path = slash == rest.endIndex ? "/" : String(rest[slash...])
        var port = defaultPort
        if let colon = authority.lastIndex(of: ":"), !authority.hasSuffix("]"), let parsed = UInt16(authority[authority.index(after: colon)...]) {
            port = parsed
            authority = String(authority[..<colon])
        }
        if authority.hasPrefix("[") && authority.hasSuffix("]") { authority = String(authority.dropFirst().dropLast()) }
        guard !authority.isEmpty, port != 0 else { return nil }
        host = authority
        self.port = port
    }
}

/// `tollgate es setup|template`: the Elasticsearch side of flow logging.
struct ES: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "es", abstract: "Elasticsearch: install or print the index template and ILM policy.",
        subcommands: [Setup.self, Template.self])

    struct Setup: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Install the ILM policy and index template (log.elasticsearch).")
        @Option(name: .long, help: "Path to the YAML config file.") var config: String

        func run() throws {
            let loaded = try loadConfig(config)
            guard let es = loaded.elasticsearch else {
                printError("\(config): no log.elasticsearch section")
                throw ExitCode(1)
            }
            switch IndexSetup.install(es) {
            case .success(let what): print(what)
            case .failure(let error):
                printError("tollgate es setup: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Template: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the index template or the ILM policy as JSON.")
        @Option(name: .long, help: "Index name prefix.") var index = "autocode-traffic"
        @Flag(name: .long, help: "Print the ILM policy instead.") var policy = false
        @Option(name: .long, help: "ILM retention in days.") var retentionDays = 30

        func run() throws {
            print(policy ? IndexSetup.policy(retentionDays: retentionDays) : IndexSetup.template(index: index))
        }
    }
}

/// `tollgate ca init|show`: the CA that signs intercepted leaves.
struct CA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Create or inspect Tollgate's certificate authority.", subcommands: [Init.self, Show.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an ECDSA P-256 CA (ca.pem, ca-key.pem).")
        @Option(name: .long, help: "Directory for ca.pem and ca-key.pem.") var dir = "certs"
        @Flag(name: .long, help: "Replace an existing CA.") var force = false

        func run() throws {
            do {
                let (certificate, key) = try CertificateAuthority.create(directory: dir, force: force)
                print("created \(certificate) and \(key)")
                if let created = Certificate.load(path: certificate) { print("SHA-256 fingerprint: \(created.fingerprint)") }
            } catch {
                printError("tollgate ca init: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the CA's path, subject, validity and fingerprint.")
        @Option(name: .long, help: "Directory holding ca.pem.") var dir = "certs"

        func run() throws {
            let path = dir + "/ca.pem"
            guard let certificate = Certificate.load(path: path) else {
                printError("tollgate ca show: \(path): no readable CA certificate (create one with `tollgate ca init`)")
                throw ExitCode(1)
            }
            print("certificate: \(path)")
            print("subject:     \(certificate.subject)")
            print("not before:  \(isoDate(certificate.notBefore))")
            print("not after:   \(isoDate(certificate.notAfter))")
            print("sha256:      \(certificate.fingerprint)")
        }
    }
}

func isoDate(_ unix: Int64) -> String {
    var writer = JSONWriter()
    writer.timestamp(milliseconds: unix * 1000)
    return String(decoding: writer.bytes.dropFirst().dropLast(), as: UTF8.self)
}

func loadConfig(_ path: String) throws -> Config {
    do {
        return try Config.load(path: path)
    } catch {
        printError(error.description)
        throw ExitCode(1)
    }
}

func printError(_ message: String) {
    var standardError = StandardError()
    print(message, to: &standardError)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

import Glibc
