import TollgateIO
import TollgatePolicy
import TollgateTLS

/// What Tollgate knows and did about the agent's TLS on this connection.
struct TLSInfo {
    var serverName: String?
    var handling: FlowRecord.TLSHandling
    var version: String?
    var cipher: String?
}

/// TLS alerts with which clients say "I do not trust this certificate".
private let certificateRejectionAlerts: Set<Int> = [42, 43, 44, 45, 46, 48, 49]

extension ClientSession {
    /// The first bytes are TLS: read the ClientHello ourselves and decide splice or intercept.
    func handleClientHello() {
        let parsed = client.inbound.withReadableBytes { ClientHelloParser.parse($0) }
        switch parsed {
        case .incomplete:
            if client.peerClosed { tlsFailed(type: "tls_bad_client_hello", message: "connection closed inside the ClientHello") }
            else if client.inbound.readableBytes > ClientHelloParser.maximumLength + 1024 {
                tlsFailed(type: "tls_bad_client_hello", message: "ClientHello is too large")
            }
        case .invalid(let reason):
            tlsFailed(type: "tls_bad_client_hello", message: reason)
        case .complete(let hello):
            decideTLS(serverName: hello.serverName)
        }
    }

    /// Connection-level decision on the ClientHello: splice, or intercept (a denial is answered
    /// inside the intercepted connection, so the agent reads why instead of seeing a reset).
    private func decideTLS(serverName: String?) {
        guard let destination = originalDestination else { return close() }
        let name = serverName.flatMap { HostNames.normalize($0) } ?? serverName
        tlsInfo = TLSInfo(serverName: name, handling: .intercepted)
        let decision: Decision
        if policy.enforcing {
            decision = policy.connectionDecision(agent: agentID, host: name, ip: destination.ip, port: destination.port, rawTCP: false)
        } else if let name, settings.splice.matches(name) || settings.tls?.isLearnedSplice(name) == true {
            decision = Decision(verdict: .splice, ruleIndex: nil, reason: "tls.splice")
        } else {
            decision = Decision(verdict: .allow, ruleIndex: nil, reason: "no_rules")
        }
        if decision.verdict == .deny { pendingDenial = decision }
        guard settings.tls != nil else {
            // No CA: TLS cannot be opened, so it is relayed untouched unless denied.
            tlsInfo?.handling = .spliced
            if decision.verdict == .deny { return tlsDenied(decision) }
            return startRawRelay(networkProtocol: .tls, decision: decision)
        }
        if decision.verdict == .splice {
            tlsInfo?.handling = .spliced
            guard let name, policy.enforcing else { return startRawRelay(networkProtocol: .tls, decision: decision) }
            return verifySpliceThenRelay(serverName: name, decision: decision)
        }
        interceptAfterDecision()
    }

    /// Without a CA a denied TLS connection can only be closed, with its record.
    private func tlsDenied(_ decision: Decision) {
        var record = newRecord(action: .rejected, networkProtocol: .tls)
        record.destinationIP = originalDestination?.ip
        record.destinationPort = originalDestination?.port
        apply(decision, to: &record)
        worker.record(&record)
        close()
    }

    /// Terminates the agent's TLS with a minted certificate.
    func interceptAfterDecision() {
        guard let engine = settings.tls else { return close() }
        worker.counters.increment(.tlsIntercepted)
        intercept(serverName: tlsInfo?.serverName, engine: engine)
    }

    private func intercept(serverName: String?, engine: TLSEngine) {
        guard let destination = originalDestination else { return close() }
        let certificateName = serverName ?? destination.ip.description
        let bound = UncheckedSendable(self)
        let certificate = engine.authority.leaf(for: certificateName, isIP: serverName == nil, on: worker.loop) { certificate in
            let session = bound.value
            guard session.phase == .awaitingCertificate else { return }
            session.startAgentTLS(certificate, engine: engine)
            session.settle()
        }
        if let certificate {
            startAgentTLS(certificate, engine: engine)
        } else {
            phase = .awaitingCertificate  // another loop is minting this name right now
        }
    }

    private func startAgentTLS(_ certificate: Certificate?, engine: TLSEngine) {
        guard let certificate,
              let transport = engine.serverTransport(socket: client.socket, clientHello: client.inbound, certificate: certificate) else {
            return tlsFailed(type: "tls_setup_failed", message: "could not mint or use a certificate")
        }
        client.inbound.removeAll()
        phase = .tlsHandshake
        timer.arm(after: settings.timeouts.header)
        client.startTransport(transport)
    }

    func agentHandshakeCompleted() {
        guard phase == .tlsHandshake, let transport = client.transport as? TLSTransport else { return }
        tlsInfo?.version = transport.version
        tlsInfo?.cipher = transport.cipher
        phase = .readingHead
        timer.arm(after: settings.timeouts.header)
        readRequestHead()
    }

    /// The agent aborted our handshake: a pinned or CA-less client is a distinct, logged event.
    func agentHandshakeFailed(_ error: ConnectionError) {
        let rejected: Bool
        switch error {
        case .closedDuringHandshake: rejected = true
        case .tls(_, let alert): rejected = alert.map { certificateRejectionAlerts.contains($0) } ?? false
        case .system: rejected = false
        }
        tlsInfo?.handling = .failed
        guard rejected else { return tlsFailed(type: "tls_handshake_failed", message: "\(error)") }
        var record = newRecord(action: .tlsClientRejectedCertificate, networkProtocol: .tls)
        record.destinationIP = originalDestination?.ip
        record.destinationPort = originalDestination?.port
        record.tlsEstablished = false
        record.errorType = "client_rejected_certificate"
        let host = tlsInfo?.serverName ?? originalDestination?.ip.description ?? "?"
        record.errorMessage = "the client refused Tollgate's certificate for \(host): \(error)"
        worker.record(&record)
        Log.warning("agent \(agent) (\(source.ip)) rejected the intercepted certificate for \(host): \(error)")
        // Only a certificate alert proves the client refuses our certificate: a bare close is
        // as often a client going away (a timeout, a load generator stopping), and learning
        // from it would end interception of that host for good.
        if settings.spliceOnClientReject, case .tls(_, .some(let alert)) = error, certificateRejectionAlerts.contains(alert),
           let name = tlsInfo?.serverName {
            settings.tls?.learnSplice(name)
            Log.info("tls.splice_on_client_reject: \(name) will be spliced from now on")
        }
        close()
    }

    /// Records a TLS failure toward the agent and closes.
    func tlsFailed(type: String, message: String) {
        if tlsInfo == nil { tlsInfo = TLSInfo(serverName: nil, handling: .failed) }
        tlsInfo?.handling = .failed
        var record = newRecord(action: .tlsFailed, networkProtocol: .tls)
        record.destinationIP = originalDestination?.ip
        record.destinationPort = originalDestination?.port
        record.tlsEstablished = false
        record.errorType = type
        record.errorMessage = message
        worker.record(&record)
        close()
    }
}
