import TollgateHTTP
import TollgateIO
import TollgatePolicy

extension ClientSession {
    /// Copies a decision into a flow record: verdict, rule name and file, reason.
    func apply(_ decision: Decision, to record: inout FlowRecord) {
        record.decision = decision.verdict
        record.reason = decision.reason
        if let index = decision.ruleIndex {
            let rule = policy.rules[index]
            record.ruleName = rule.name
            record.ruleset = rule.location.file
        }
    }

    /// The rule's name, or the built-in reason (`default_deny`, `unknown_agent`...).
    func ruleLabel(_ decision: Decision) -> String {
        decision.ruleIndex.map { policy.rules[$0].name } ?? decision.reason
    }

    /// Request-level decision (connection-level denial first); answers 403 and returns nil when denied.
    func admitRequest(host: String, ip: IPAddress, port: UInt16) -> Decision? {
        guard let exchange else { return nil }
        let decision: Decision
        if let pendingDenial {
            decision = pendingDenial
        } else if exchange.request.isConnect {
            decision = policy.connectionDecision(agent: agentID, host: HostNames.normalize(host), ip: ip, port: port, rawTCP: false)
        } else {
            decision = policy.requestDecision(agent: agentID, host: HostNames.normalize(host), ip: ip, port: port,
                                              method: exchange.request.method, path: exchange.target.path)
        }
        apply(decision, to: &exchange.record)
        if decision.allowsTraffic { return decision }
        respondDenied(decision)
        return nil
    }

    /// 403 with a body and header an agent can act on.
    func respondDenied(_ decision: Decision) {
        let label = ruleLabel(decision)
        let message: String
        switch decision.reason {
        case "unknown_agent": message = "source \(source.ip) is not a known agent"
        case "default_deny": message = "no rule allows this request"
        case "sni_mismatch": message = "the destination address is not one the TLS server name resolves to"
        case "host_mismatch": message = "the destination address is not one the Host name resolves to"
        case let reason where reason.hasPrefix("internal_address"):
            message = "destination is an internal address (\(reason.dropFirst("internal_address:".count))); a rule must name it with allow_internal: true"
        default: message = "denied by rule '\(label)'"
        }
        respondError(status: 403, type: "policy_denied", message: message,
                     extraFields: [("rule", label), ("agent", agent)],
                     headers: [("X-Tollgate-Decision", "deny; rule=\(label)")])
    }

    /// Transparent traffic that is neither HTTP nor TLS: only a rule naming its address lets it out.
    func relayRawTCP() {
        guard let destination = originalDestination else { return close() }
        let decision = policy.connectionDecision(agent: agentID, host: nil, ip: destination.ip, port: destination.port, rawTCP: true)
        guard decision.allowsTraffic else {
            var record = newRecord(action: .tcpRelay, networkProtocol: .tcp)
            record.destinationIP = destination.ip
            record.destinationPort = destination.port
            apply(decision, to: &record)
            worker.record(&record)
            return close()
        }
        startRawRelay(networkProtocol: .tcp, decision: decision)
    }

    /// Splicing trusts the SNI only if the destination is one of its addresses (else SNI spoofing
    /// walks through): resolve off the loop, then relay or deny as `sni_mismatch`.
    func verifySpliceThenRelay(serverName: String, decision: Decision) {
        lookUp(serverName, waitingIn: .verifyingSplice) { session, addresses in
            session.finishSpliceCheck(addresses: addresses, decision: decision)
        }
    }

    private func finishSpliceCheck(addresses: [IPAddress], decision: Decision) {
        guard let destination = originalDestination else { return close() }
        if addresses.contains(destination.ip) {
            return startRawRelay(networkProtocol: .tls, decision: decision)
        }
        tlsInfo?.handling = .intercepted
        pendingDenial = Decision(verdict: .deny, ruleIndex: decision.ruleIndex, reason: "sni_mismatch")
        interceptAfterDecision()
    }
}
