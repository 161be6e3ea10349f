import TollgateHTTP
import TollgateIO
import TollgatePolicy
import TollgateTLS

/// An upstream connection held by a session between its client's requests.
struct KeptUpstream {
    let connection: Connection
    let key: PoolKey
    /// When its last exchange finished (loop nanoseconds).
    let since: UInt64
}

extension Connection {
    /// Open both ways with nothing unread: it can carry another request (the one definition for
    /// upstreams going back to the pool or kept by their session).
    var canCarryAnotherRequest: Bool { !isClosed && !peerClosed && inbound.isEmpty }
}

/// The state of one HTTP request/response exchange: a class, so the session mutates it in
/// place instead of copying its heads and record on every step.
final class Exchange {
    var request: RequestHead
    var record: FlowRecord
    var target: RequestTarget
    var requestDecoder: BodyDecoder
    var requestChunked: Bool
    var requestComplete: Bool
    var requestBodyBytes = 0
    var responseScanner = HeadScanner()
    var response: ResponseHead?
    var responseDecoder = BodyDecoder(framing: .none)
    var responseChunked = false
    var responseHeadSent = false
    var responseComplete = false
    var responseBodyBytes = 0
    var closeClientAfter: Bool
    var upstreamReused = false
    var awaitingResponse = false
    let startNanoseconds: UInt64

    init(request: RequestHead, record: FlowRecord, target: RequestTarget, requestDecoder: BodyDecoder, requestChunked: Bool,
         requestComplete: Bool, closeClientAfter: Bool, startNanoseconds: UInt64) {
        self.request = request
        self.record = record
        self.target = target
        self.requestDecoder = requestDecoder
        self.requestChunked = requestChunked
        self.requestComplete = requestComplete
        self.closeClientAfter = closeClientAfter
        self.startNanoseconds = startNanoseconds
    }
}

extension ClientSession {
    // MARK: Request head

    func readRequestHead() {
        guard phase == .readingHead else { return }
        if client.inbound.isEmpty {
            if client.peerClosed { close() }
            return
        }
        let limits = settings.headLimits
        do {
            let found = try client.inbound.withReadableBytes { (bytes) throws(HTTPError) in try scanner.scan(bytes, limits: limits, isRequest: true) }
            guard let length = found else {
                if client.peerClosed { close() }
                return
            }
            let head = try client.inbound.withReadableBytes { (bytes) throws(HTTPError) in try HeadParser.parseRequest(bytes, length: length, limits: limits) }
            client.inbound.consume(length)
            beginExchange(head)
        } catch {
            scanner.reset()
            respondError(status: error.status, type: error.errorType, message: "request rejected: \(error.reason)")
        }
    }

    private func beginExchange(_ head: RequestHead) {
        exchangeCount += 1
        // The exchange is made first and its record filled in place: a FlowRecord is large,
        // and each copy of one retained every field.
        let exchange = Exchange(
            request: head, record: newRecord(action: .httpRequest, networkProtocol: .http),
            target: RequestTarget(host: "", port: 0, path: ""),
            requestDecoder: BodyDecoder(framing: head.framing), requestChunked: head.framing == .chunked,
            requestComplete: head.framing == .none || head.framing == .length(0) || head.isConnect,
            closeClientAfter: !head.keepAlive || draining, startNanoseconds: worker.loop.now)
        self.exchange = exchange
        exchange.record.method = head.method
        exchange.record.httpVersion = head.minorVersion == 1 ? .http1_1 : .http1_0

        // Where to: the verified original destination (transparent), or the request's own target (explicit).
        let target: RequestTarget
        if head.isConnect {
            guard kind == .explicit, let (host, port) = RequestTarget.parseAuthority(head.target, defaultPort: nil) else {
                return rejectHead(exchange, status: 400, type: "bad_request", message: "CONNECT needs host:port and the explicit listener")
            }
            target = RequestTarget(host: host, port: port, path: "")
        } else if let absolute = RequestTarget.parseAbsolute(head.target) {
            target = absolute
        } else if head.target.hasPrefix("/"), let destination = originalDestination {
            let hostHeader = head.headers.first(.host).flatMap { RequestTarget.parseAuthority($0, defaultPort: destination.port) }
            // Decide on the verified name (SNI), never on the Host header alone.
            if let serverName = tlsInfo?.serverName, let host = hostHeader?.0, host != serverName {
                return rejectHead(exchange, status: 421, type: "misdirected_request",
                                  message: "Host '\(host)' does not match the TLS server name '\(serverName)'")
            }
            target = RequestTarget(host: hostHeader?.0 ?? tlsInfo?.serverName ?? destination.ip.description,
                                   port: destination.port, path: head.target)
        } else {
            let message = kind == .explicit ? "the explicit proxy needs an absolute-form target (http://host/path) or CONNECT"
                                            : "request target must be origin-form"
            return rejectHead(exchange, status: 400, type: "bad_request", message: message)
        }
        exchange.target = target
        exchange.record.urlDomain = target.host
        if head.isConnect {
            exchange.record.urlPort = target.port
        } else {
            exchange.record.urlScheme = isIntercepted ? .https : .http
            exchange.record.urlPort = target.port == (isIntercepted ? 443 : 80) ? nil : target.port
            // Secrets in query parameters never reach a record.
            if let question = target.path.utf8.firstIndex(of: UInt8(ascii: "?")) {
                exchange.record.urlPath = String(target.path[..<question])
                exchange.record.urlQuery = Redaction.query(target.path[target.path.index(after: question)...])
            } else {
                exchange.record.urlPath = target.path
            }
        }
        exchange.record.requestHeaders = head.headers
        exchange.record.destinationDomain = target.host
        if head.isConnect { exchange.record.action = .tunnel; exchange.record.networkProtocol = .tcp }

        if settings.limits.bodyBytes > 0, case .length(let n) = head.framing, n > settings.limits.bodyBytes {
            return rejectHead(exchange, status: 413, type: "body_too_large",
                              message: "request body of \(n) bytes exceeds the limit of \(settings.limits.bodyBytes)")
        }
        if head.upgrade == nil && !head.isConnect {
            timer.arm(after: exchange.requestComplete ? settings.timeouts.response : settings.timeouts.idle)
        }

        if let destination = originalDestination, !head.isConnect {
            admitThenAttach(destination)
        } else if let literal = IPAddress(parsing: target.host) {
            admitThenAttach(SocketAddress(ip: literal, port: target.port))
        } else {
            resolveAndAttach(host: target.host, port: target.port)
        }
    }

    /// Decides on the exact address that will be dialled (no second lookup), then dials it.
    private func admitThenAttach(_ destination: SocketAddress) {
        guard let exchange, let decision = admitRequest(host: exchange.target.host, ip: destination.ip, port: destination.port) else { return }
        // Plain HTTP allowed by a host *name* proves nothing about the address it goes to (the
        // Host header is the agent's word): the name must resolve to the original destination.
        // Intercepted TLS is bound by the upstream certificate, the explicit proxy dials what it resolved.
        if decision.matchedByName && decision.verdict != .deny && kind == .transparent && !isIntercepted
            && IPAddress(parsing: exchange.target.host) == nil {
            return verifyNameThenAttach(exchange.target.host, destination, decision)
        }
        attachUpstream(destination)
    }

    private func verifyNameThenAttach(_ host: String, _ destination: SocketAddress, _ decision: Decision) {
        lookUp(host, waitingIn: .resolving) { session, addresses in
            if addresses.contains(destination.ip) { return session.attachUpstream(destination) }
            let denial = Decision(verdict: .deny, ruleIndex: decision.ruleIndex, reason: "host_mismatch")
            if let exchange = session.exchange {
                session.apply(denial, to: &exchange.record)
            }
            session.respondDenied(denial)
        }
    }

    /// Answers a request refused on its head alone; its body (if any) is never read.
    private func rejectHead(_ exchange: Exchange, status: Int, type: String, message: String) {
        exchange.requestDecoder = BodyDecoder(framing: .none)
        exchange.requestChunked = false
        exchange.requestComplete = true
        exchange.closeClientAfter = true
        respondError(status: status, type: type, message: message)
    }

    // MARK: Upstream

    private func resolveAndAttach(host: String, port: UInt16) {
        lookUp(host, waitingIn: .resolving) { session, addresses in
            session.attachResolved(host: host, port: port, addresses: addresses)
        }
    }

    private func attachResolved(host: String, port: UInt16, addresses: [IPAddress]) {
        guard let first = addresses.first else {
            upstreamFailed(type: "upstream_dns_failed", message: "could not resolve \(host)", status: 502)
            return
        }
        admitThenAttach(SocketAddress(ip: first, port: port))
    }

    /// True when requests on this connection arrived inside TLS we terminated.
    var isIntercepted: Bool { tlsInfo?.handling == .intercepted }

    private var poolKey: PoolKey? {
        guard let upstreamDestination else { return nil }
        return PoolKey(address: upstreamDestination, tlsServerName: isIntercepted ? (tlsInfo?.serverName ?? "") : nil)
    }

    // MARK: The kept upstream

    /// Keeps the upstream of a finished exchange for this client's next request: a keep-alive
    /// client nearly always goes to the same place again, and parking the connection in the
    /// pool and taking it back cost more per request than parsing the request. It stays
    /// readable, so a server that closes it or sends anything gets it dropped at once.
    private func keep(_ connection: Connection, key: PoolKey) {
        kept = KeptUpstream(connection: connection, key: key, since: worker.loop.now)
        connection.wantsRead = true
        // An idle client must not hold buffer memory for its upstream either; the loop's block
        // cache hands the storage back on the next request.
        connection.inbound.releaseIfEmpty()
        connection.outbound.releaseIfEmpty()
    }

    /// The kept upstream if it goes to `key` and is still clean and fresh; otherwise it goes to
    /// the pool (or is closed) and nil is returned.
    private func takeKeptUpstream(for key: PoolKey) -> Connection? {
        guard let kept else { return nil }
        if kept.key == key && isReusable(kept) {
            self.kept = nil
            return kept.connection
        }
        releaseKeptUpstream()
        return nil
    }

    /// Parks the kept upstream in the pool, where other clients can use it (closing it when it
    /// can no longer carry a request, or while draining).
    func releaseKeptUpstream() {
        guard let kept else { return }
        self.kept = nil
        if isReusable(kept) && !draining {
            worker.pool.put(kept.connection, destination: kept.key, loop: worker.loop)
        } else {
            kept.connection.close()
        }
    }

    /// Clean, and idle for less than `upstream_idle` (as long as the pool would have kept it).
    private func isReusable(_ kept: KeptUpstream) -> Bool {
        kept.connection.canCarryAnotherRequest && worker.loop.now - kept.since < settings.timeouts.upstreamIdle
    }

    /// Takes a pooled connection to `destination` or dials a new one (TLS when the agent's was
    /// intercepted), then queues the request.
    func attachUpstream(_ destination: SocketAddress) {
        guard let exchange else { return }
        upstreamDestination = destination
        exchange.record.destinationIP = destination.ip
        exchange.record.destinationPort = destination.port
        if settings.ownAddresses.contains(destination) {
            return respondError(status: 508, type: "loop_detected", message: "\(destination) is Tollgate itself")
        }
        if !exchange.request.isConnect, let key = poolKey, let reused = takeKeptUpstream(for: key) ?? worker.pool.take(key) {
            exchange.upstreamReused = true
            upstream = reused
            reused.delegate = self
            upstreamConnected()
            return
        }
        let connection: Connection
        if let ready = preconnected {
            preconnected = nil
            connection = ready
        } else {
            do {
                let socket = try Socket.connect(to: destination)
                connection = Connection(socket: socket, loop: worker.loop, connecting: true)
                try connection.start(delegate: self)
            } catch {
                return upstreamFailed(type: "upstream_connect_failed", message: "connect to \(destination) failed: \(error)", status: 502)
            }
        }
        upstream = connection
        phase = .connecting
        timer.arm(after: settings.timeouts.connect)
        if isIntercepted, let engine = settings.tls, let key = poolKey {
            guard let transport = engine.clientTransport(socket: connection.socket, serverName: tlsInfo?.serverName,
                                                         address: destination.ip, cacheKey: "\(key)") else {
                return upstreamFailed(type: "upstream_tls_failed", message: "cannot set up TLS toward \(destination)", status: 502)
            }
            connection.startTransport(transport)
        } else if !connection.isConnecting {
            upstreamConnected()
        }
    }

    func upstreamConnected() {
        guard let upstream else { return }
        if let exchange, exchange.request.isConnect {
            return openConnectTunnel()
        }
        if exchange == nil {  // a raw relay was waiting for its connect
            return beginTunnel(carrying: nil)
        }
        phase = .exchanging
        writeRequestHead(to: upstream)
        pumpRequestBody()
        if exchange?.requestComplete == true { exchange?.awaitingResponse = true }
        let waitingForResponse = exchange?.requestComplete == true && exchange?.request.upgrade == nil
        timer.arm(after: waitingForResponse ? settings.timeouts.response : settings.timeouts.idle)
    }

    private func writeRequestHead(to upstream: Connection) {
        guard let exchange else { return }
        let head = exchange.request
        let addHost = head.headers.fields.contains { $0.known == .host } ? nil : hostHeaderValue(exchange.target)
        worker.scratch.removeAll(keepingCapacity: true)
        HeadWriter.writeRequest(head, target: exchange.target.path, addHost: addHost, framing: head.framing, into: &worker.scratch)
        upstream.outbound.append(worker.scratch)
    }

    private func hostHeaderValue(_ target: RequestTarget) -> String {
        return target.port == 80 ? target.bracketedHost : "\(target.bracketedHost):\(target.port)"
    }

    /// Upstream failed before a response could be relayed: answer with a JSON error if we still can.
    func upstreamFailed(type: String, message: String, status: Int) {
        upstream?.close()
        upstream = nil
        if let exchange, exchange.responseHeadSent {
            return abort(reason: type, message: message)
        }
        if exchange == nil {  // raw relay that never connected
            var record = newRecord(action: .tcpRelay, networkProtocol: tunnel?.networkProtocol ?? .tcp)
            record.destinationIP = originalDestination?.ip
            record.destinationPort = originalDestination?.port
            record.errorType = type
            record.errorMessage = message
            worker.record(&record)
            tunnel = nil
            return close()
        }
        respondError(status: status, type: type, message: message)
    }

    // MARK: Bodies

    /// Moves request body bytes from the client to the upstream, re-framed, within the buffer bound.
    func pumpRequestBody() {
        guard phase == .exchanging, let exchange, !exchange.requestComplete, let upstream else { return }
        let limit = settings.limits.bodyBytes
        while upstream.pendingOutput < settings.limits.bufferHighWater {
            let step: BodyStep
            do {
                step = try client.inbound.withReadableBytes { (bytes) throws(HTTPError) in try exchange.requestDecoder.next(bytes) }
            } catch {
                respondError(status: 400, type: "bad_request", message: "request body rejected: \(error.reason)")
                return
            }
            switch step {
            case .data(let offset, let count, let consumed):
                exchange.requestBodyBytes += count
                if limit > 0 && exchange.requestBodyBytes > limit {
                    respondError(status: 413, type: "body_too_large", message: "request body exceeds the limit of \(limit) bytes")
                    return
                }
                forward(from: client.inbound, offset: offset, count: count, to: upstream.outbound, chunked: exchange.requestChunked)
                client.inbound.consume(consumed)
                // The response clock starts when the request is complete; until then, progress counts.
                if !exchange.responseHeadSent { timer.arm(after: settings.timeouts.idle) }
            case .needMore(let consumed):
                client.inbound.consume(consumed)
                return
            case .end(let consumed):
                client.inbound.consume(consumed)
                if exchange.requestChunked { upstream.outbound.append("0\r\n\r\n" as StaticString) }
                exchange.requestComplete = true
                if !exchange.responseComplete { exchange.awaitingResponse = true; timer.arm(after: settings.timeouts.response) }
                if exchange.responseComplete { finishExchange() }
                return
            }
        }
    }

    /// Parses the response head (relaying 1xx) and moves body bytes to the client, re-framed.
    func pumpResponse() {
        guard phase == .exchanging, let upstream else { return }
        while let exchange, !exchange.responseComplete {
            if exchange.response == nil {
                guard readResponseHead(exchange, upstream) else { return }
                if phase != .exchanging { return }
                continue
            }
            if client.pendingOutput >= settings.limits.bufferHighWater { return }
            let step: BodyStep
            do {
                step = try upstream.inbound.withReadableBytes { (bytes) throws(HTTPError) in try exchange.responseDecoder.next(bytes) }
            } catch {
                return abort(reason: "upstream_bad_response", message: "response body rejected: \(error.reason)")
            }
            switch step {
            case .data(let offset, let count, let consumed):
                exchange.responseBodyBytes += count
                forward(from: upstream.inbound, offset: offset, count: count, to: client.outbound, chunked: exchange.responseChunked)
                upstream.inbound.consume(consumed)
                timer.arm(after: settings.timeouts.idle)
            case .needMore(let consumed):
                upstream.inbound.consume(consumed)
                if upstream.peerClosed {
                    if exchange.response?.framing == .untilClose { return completeResponse() }
                    return abort(reason: "upstream_reset", message: "upstream closed in the middle of the response body")
                }
                return
            case .end(let consumed):
                upstream.inbound.consume(consumed)
                return completeResponse()
            }
        }
    }

    /// Reads one response head; returns false when more bytes are needed or the exchange ended.
    private func readResponseHead(_ exchange: Exchange, _ upstream: Connection) -> Bool {
        let limits = settings.headLimits
        let isHead = exchange.request.isHead
        do {
            let found = try upstream.inbound.withReadableBytes { (bytes) throws(HTTPError) in try exchange.responseScanner.scan(bytes, limits: limits, isRequest: false) }
            guard let length = found else {
                if upstream.peerClosed { retryOrFail(exchange) }
                return false
            }
            let head = try upstream.inbound.withReadableBytes { (bytes) throws(HTTPError) in try HeadParser.parseResponse(bytes, length: length, limits: limits, requestIsHead: isHead) }
            upstream.inbound.consume(length)
            if head.status == 101, exchange.request.upgrade != nil {
                exchange.response = head
                exchange.record.statusCode = 101
                exchange.record.networkProtocol = .websocket
                writeResponseHead(head, framing: .none, close: false, upgrade: true)
                return switchToUpgradedTunnel()
            }
            if head.isInformational {
                writeResponseHead(head, framing: .none, close: false, upgrade: false)
                return true
            }
            var framing = head.framing
            if framing == .untilClose {
                // Re-frame as chunked so an HTTP/1.1 client keeps its connection.
                if exchange.request.minorVersion == 1 { framing = .chunked } else { exchange.closeClientAfter = true }
            }
            if !exchange.requestComplete { exchange.closeClientAfter = true }
            exchange.closeClientAfter = exchange.closeClientAfter || draining
            exchange.response = head
            exchange.responseChunked = framing == .chunked
            exchange.responseDecoder = BodyDecoder(framing: head.framing)
            exchange.responseHeadSent = true
            exchange.awaitingResponse = false
            exchange.record.statusCode = head.status
            exchange.record.responseHeaders = head.headers
            writeResponseHead(head, framing: framing, close: exchange.closeClientAfter, upgrade: false)
            timer.arm(after: settings.timeouts.idle)
            return true
        } catch {
            upstreamFailed(type: "upstream_bad_response", message: "upstream response rejected: \(error.reason)", status: 502)
            return false
        }
    }

    /// A reused keep-alive connection closed before answering: the server timed it out just as we
    /// sent. Retry once on a fresh connection when nothing of the request body was consumed.
    private func retryOrFail(_ exchange: Exchange) {
        if exchange.upstreamReused && exchange.requestBodyBytes == 0 && exchange.request.framing == .none, let destination = upstreamDestination {
            upstream?.close()
            upstream = nil
            self.exchange?.upstreamReused = false
            return attachUpstream(destination)
        }
        upstreamFailed(type: "upstream_reset", message: "upstream closed the connection before responding", status: 502)
    }

    private func writeResponseHead(_ head: ResponseHead, framing: BodyFraming, close: Bool, upgrade: Bool) {
        worker.scratch.removeAll(keepingCapacity: true)
        HeadWriter.writeResponse(head, framing: framing, close: close, upgrade: upgrade, into: &worker.scratch)
        client.outbound.append(worker.scratch)
    }

    private func forward(from source: ByteBuffer, offset: Int, count: Int, to destination: ByteBuffer, chunked: Bool) {
        if chunked {
            destination.appendHex(count)
            destination.append("\r\n" as StaticString)
        }
        source.withReadableBytes { destination.append(UnsafeRawBufferPointer(rebasing: $0[offset..<(offset + count)])) }
        if chunked { destination.append("\r\n" as StaticString) }
    }

    private func completeResponse() {
        guard let exchange else { return }
        if exchange.responseChunked { client.outbound.append("0\r\n\r\n" as StaticString) }
        exchange.responseComplete = true
        if exchange.requestComplete { finishExchange() } else {
            // The server answered before the body was sent (an early 413, say): this connection
            // cannot be reused and the client's remaining body has nowhere to go.
            finishExchange()
        }
    }

    /// Records the exchange, parks or closes the upstream, and reads the next request or closes.
    func finishExchange() {
        guard let exchange else { return }
        self.exchange = nil
        finishRecord(&exchange.record, exchange)
        worker.record(&exchange.record)
        if let upstream, let key = poolKey {
            if !exchange.upstreamReused, let tls = upstream.transport as? TLSTransport {
                settings.tls?.storeSession(from: tls, cacheKey: "\(key)")
            }
            let reusable = exchange.requestComplete && exchange.response?.keepAlive == true
                && exchange.response?.framing != .untilClose && upstream.canCarryAnotherRequest
                && !draining
            if !reusable {
                upstream.close()
            } else if exchange.closeClientAfter {
                worker.pool.put(upstream, destination: key, loop: worker.loop)
            } else {
                keep(upstream, key: key)
            }
        }
        upstream = nil
        if exchange.closeClientAfter || !exchange.requestComplete || draining {
            return close()
        }
        phase = .readingHead
        client.inbound.releaseIfEmpty()
        // With an upstream kept, the first deadline is the end of its hold (timerFired then
        // hands it to the pool and waits out the rest of the client's idle time).
        timer.arm(after: kept != nil ? min(settings.timeouts.idle, keptUpstreamHold) : settings.timeouts.idle)
        readRequestHead()
    }

    /// How long an idle client keeps its upstream before it goes to the pool: long enough for
    /// back-to-back requests, short enough that idle clients hold no upstream connections
    /// beyond the pool's per-destination bound (and never past upstream_idle).
    var keptUpstreamHold: UInt64 { min(1_000_000_000, settings.timeouts.upstreamIdle) }

    /// The client is idle and its kept upstream's hold is over: the connection goes to the pool
    /// (or is closed) and the timer waits out the rest of the client's idle time. False if that
    /// is not the case.
    func releaseKeptUpstreamIfHoldIsOver() -> Bool {
        guard let kept, client.inbound.isEmpty, worker.loop.now - kept.since >= keptUpstreamHold else { return false }
        releaseKeptUpstream()
        timer.arm(at: kept.since + settings.timeouts.idle)
        return true
    }

    func finishRecord(_ record: inout FlowRecord, _ exchange: Exchange? = nil) {
        let exchange = exchange ?? self.exchange
        if let exchange {
            record.durationNanoseconds = worker.loop.now - exchange.startNanoseconds
            record.requestBodyBytes = exchange.requestBodyBytes
            if record.statusCode != nil { record.responseBodyBytes = exchange.responseBodyBytes }
            record.upstreamReused = upstreamDestination == nil ? nil : exchange.upstreamReused
        }
    }

    // MARK: Errors

    /// Answers with Tollgate's own JSON error and closes the client after it.
    func respondError(status: Int, type: String, message: String,
                      extraFields: [(String, String)] = [], headers: [(String, String)] = []) {
        if let exchange, exchange.responseHeadSent { return abort(reason: type, message: message) }
        upstream?.close()
        upstream = nil
        var record = exchange?.record ?? newRecord(action: .httpRequest, networkProtocol: .http)
        record.statusCode = status
        if status != 403 || type != "policy_denied" {
            record.errorType = type
            record.errorMessage = message
        }
        finishRecord(&record)
        worker.record(&record)
        exchange = nil
        var body = JSONWriter(capacity: 128)
        body.beginObject()
        body.object("error") { w in
            w.field("type", type)
            w.field("message", message)
            for (name, value) in extraFields {
                w.key(dynamic: name)
                w.string(value)
            }
        }
        body.endObject()
        body.newline()
        worker.scratch.removeAll(keepingCapacity: true)
        HeadWriter.writeLocalResponse(status: status, reason: reasonPhrase(status), headers: [("Content-Type", "application/json")] + headers,
                                      body: body.bytes, close: true, into: &worker.scratch)
        client.outbound.append(worker.scratch)
        client.flush()
        close()
    }
}

func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 200: return "OK"
    case 400: return "Bad Request"
    case 403: return "Forbidden"
    case 408: return "Request Timeout"
    case 413: return "Content Too Large"
    case 414: return "URI Too Long"
    case 421: return "Misdirected Request"
    case 431: return "Request Header Fields Too Large"
    case 502: return "Bad Gateway"
    case 503: return "Service Unavailable"
    case 504: return "Gateway Timeout"
    case 505: return "HTTP Version Not Supported"
    default: return "Error"
    }
}

/// Carries a loop-confined object through a `@Sendable` closure that runs back on the same loop.
struct UncheckedSendable<T>: @unchecked Sendable {  // only dereferenced on the owning loop's thread
    let value: T
    init(_ value: T) { self.value = value }
}
