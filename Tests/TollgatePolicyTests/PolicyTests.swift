import Testing
import TollgateIO
@testable import TollgatePolicy

let agentsFile = ("rules/10-agents.yaml", """
    agents:
      worker-1: { sources: ["10.99.0.2"], groups: [coders], daily_budget_usd: 25 }
      worker-2: { sources: ["10.99.0.3/32"], groups: [coders, buyers] }
      lab: { sources: ["10.50.0.0/16"] }
    """)

func policy(_ rules: String) -> Policy {
    let source = RuleLoader.parse(files: [agentsFile, ("rules/50-egress.yaml", rules)])
    precondition(source.errors.isEmpty, "\(source.errors)")
    return Policy(source: source, loadedAt: 0)
}

let ip = IPAddress(parsing: "203.0.113.10")!

@Suite struct PolicyTests {
    let egress = policy("""
        rules:
          - name: github-read
            agents: [coders]
            hosts: ["github.com", "*.githubusercontent.com"]
            ports: [443]
            methods: [GET, HEAD]
            paths: ["/*"]
            action: allow
          - name: buyers-shop
            agents: [buyers]
            hosts: ["shop.example"]
            action: allow
          - name: pinned
            agents: ["*"]
            hosts: ["pinned.example"]
            action: splice
          - name: ssh-box
            agents: [worker-1]
            hosts: ["203.0.113.20"]
            ports: [22]
            action: allow
          - name: try-block
            agents: ["*"]
            hosts: ["tracker.example"]
            action: deny
            mode: report
          - name: lab-internal
            agents: [lab]
            hosts: ["10.50.1.0/24"]
            action: allow
            allow_internal: true
        """)

    func request(_ agent: String, _ host: String, _ method: String = "GET", _ path: String = "/", port: UInt16 = 443, ip: IPAddress = ip) -> Decision {
        egress.requestDecision(agent: egress.agentID(named: agent), host: host, ip: ip, port: port, method: method, path: path)
    }

    @Test func firstMatchingRuleDecides() {
        #expect(request("worker-1", "github.com").verdict == .allow)
        #expect(request("worker-1", "raw.githubusercontent.com").verdict == .allow)
        #expect(request("worker-1", "github.com", "POST").reason == "default_deny")
        #expect(request("worker-1", "github.com", port: 80).reason == "default_deny")
        #expect(request("worker-1", "githubusercontent.com").reason == "default_deny")
        #expect(request("worker-1", "shop.example").verdict == .deny)
        #expect(request("worker-2", "shop.example").verdict == .allow)
    }

    @Test func reportModeLetsTrafficThroughAndSaysSo() {
        let decision = request("worker-1", "tracker.example")
        #expect(decision.verdict == .report)
        #expect(decision.reason == "report:deny")
        #expect(decision.allowsTraffic)
    }

    @Test func connectionLevelSplicesAndRawTCPNeedsAnAddressRule() {
        let agent = egress.agentID(named: "worker-1")
        #expect(egress.connectionDecision(agent: agent, host: "pinned.example", ip: ip, port: 443, rawTCP: false).verdict == .splice)
        #expect(egress.connectionDecision(agent: agent, host: "github.com", ip: ip, port: 443, rawTCP: false).verdict == .allow)
        let ssh = IPAddress(parsing: "203.0.113.20")!
        #expect(egress.connectionDecision(agent: agent, host: nil, ip: ssh, port: 22, rawTCP: true).verdict == .allow)
        #expect(egress.connectionDecision(agent: agent, host: nil, ip: ssh, port: 23, rawTCP: true).verdict == .deny)
        #expect(egress.connectionDecision(agent: egress.agentID(named: "worker-2"), host: nil, ip: ssh, port: 22, rawTCP: true).verdict == .deny)
    }

    @Test func unknownSourcesAreDenied() {
        #expect(egress.agent(for: IPAddress(parsing: "10.99.0.9")!) == nil)
        #expect(egress.requestDecision(agent: nil, host: "github.com", ip: ip, port: 443, method: "GET", path: "/").reason == "unknown_agent")
        #expect(egress.agent(for: IPAddress(parsing: "10.50.3.3")!) == egress.agentID(named: "lab"))
    }

    @Test func internalAddressesNeedAnExplicitRule() {
        for (address, expected) in [("127.0.0.1", "loopback"), ("10.1.2.3", "private"), ("172.16.5.5", "private"), ("192.168.1.1", "private"),
                                    ("100.64.0.1", "cgnat"), ("169.254.169.254", "link_local"), ("224.0.0.1", "multicast"),
                                    ("0.0.0.0", "unspecified"), ("::1", "loopback"), ("::ffff:10.0.0.1", "ipv4_mapped"),
                                    ("fe80::1", "link_local"), ("fd00::1", "private"), ("64:ff9b::a00:1", "ipv4_embedded")] {
            let decision = egress.requestDecision(agent: egress.agentID(named: "worker-1"), host: "github.com",
                                                  ip: IPAddress(parsing: address)!, port: 443, method: "GET", path: "/")
            #expect(decision.reason == "internal_address:\(expected)", "\(address)")
        }
        let lab = egress.agentID(named: "lab")
        #expect(egress.requestDecision(agent: lab, host: nil, ip: IPAddress(parsing: "10.50.1.7")!, port: 80, method: "GET", path: "/").verdict == .allow)
        #expect(egress.requestDecision(agent: lab, host: nil, ip: IPAddress(parsing: "10.50.2.7")!, port: 80, method: "GET", path: "/").verdict == .deny)
    }

    @Test func hostNamesAreNormalised() {
        #expect(HostNames.normalize("GitHub.COM.") == "github.com")
        #expect(HostNames.normalize("bücher.example") == "xn--bcher-kva.example")
        #expect(HostNames.normalize("münchen.de") == "xn--mnchen-3ya.de")
        #expect(HostNames.normalize("bad host") == nil)
        let idn = policy("""
            rules:
              - { name: idn, agents: ["*"], hosts: ["Bücher.example."], action: allow }
            """)
        #expect(idn.requestDecision(agent: 0, host: HostNames.normalize("BÜCHER.example"), ip: ip, port: 80, method: "GET", path: "/").verdict == .allow)
    }

    @Test func pathGlobsMatchRunsOfCharacters() {
        func matches(_ glob: String, _ path: String) -> Bool {
            Array(path.utf8).withUnsafeBufferPointer { PathGlob(glob).matches($0) }
        }
        #expect(matches("/*", "/a/b"))
        #expect(matches("/repos/*/pulls", "/repos/x/y/pulls"))
        #expect(!matches("/repos/*/pulls", "/repos/x/issues"))
        #expect(matches("/exact", "/exact"))
        #expect(!matches("/exact", "/exact/more"))
        #expect(matches("*.tar.gz", "/dist/x.tar.gz"))
        #expect(request("worker-1", "github.com", "GET", "/org/repo?tab=1").verdict == .allow)
    }
}

@Suite struct RuleFileTests {
    @Test func reportsEveryMistakeWithItsPosition() {
        let source = RuleLoader.parse(files: [agentsFile, ("rules/50-bad.yaml", """
            rules:
              - name: a
                agents: [nobody]
                hosts: ["git*hub.com", "10.0.0.0/33"]
                ports: [0]
                action: allow
                colour: blue
              - name: a
                agents: ["*"]
                action: deny
              - name: b
                agents: ["*"]
                hosts: ["x.example"]
                methods: [GET]
                action: splice
              - name: c
                agents: ["*"]
                action: maybe
            """)])
        let messages = source.errors.map(\.description)
        #expect(messages == [
            "rules/50-bad.yaml:3:14: unknown agent or group 'nobody'",
            "rules/50-bad.yaml:4:13: bad host 'git*hub.com': wildcards are only allowed as a leading '*.'",
            "rules/50-bad.yaml:4:28: bad host '10.0.0.0/33': not a valid CIDR",
            "rules/50-bad.yaml:5:13: bad port '0': expected 1-65535",
            "rules/50-bad.yaml:7:5: unknown key 'colour' in rule (expected one of: action, agents, allow_internal, hosts, methods, mode, name, paths, ports)",
            "rules/50-bad.yaml:8:5: duplicate rule name 'a' (first defined at rules/50-bad.yaml:2:5)",
            "rules/50-bad.yaml:15:13: rule 'b': splice happens before interception, so it cannot have methods or paths",
            "rules/50-bad.yaml:18:13: bad action 'maybe': expected allow, deny or splice",
        ])
    }

    @Test func warnsAboutShadowedRules() {
        let source = RuleLoader.parse(files: [agentsFile, ("rules/50.yaml", """
            rules:
              - { name: broad, agents: ["*"], hosts: ["*.example.com"], action: allow }
              - { name: narrow, agents: [coders], hosts: ["api.example.com"], methods: [GET], action: deny }
              - { name: other, agents: [coders], hosts: ["example.org"], action: deny }
            """)])
        #expect(source.errors.isEmpty)
        #expect(source.warnings.map(\.description) == [
            "rules/50.yaml:3:5: warning: rule 'narrow' can never match: rule 'broad' at rules/50.yaml:2:5 matches everything it would",
        ])
    }
}
