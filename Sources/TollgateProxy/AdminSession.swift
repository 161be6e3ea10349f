import TollgateHTTP
import TollgateIO

/// One request on the admin listener: `GET /healthz`, `GET /metrics` (rule status comes with the policy engine).
/// Answers and closes: the admin API is low-volume and operator-facing.
final class AdminSession: ConnectionDelegate, TimerTarget {
    private let connection: Connection
    private var scanner = HeadScanner()
    private lazy var timer = Timer(loop: connection.loop, target: self)
    private let metrics: MetricsRenderer?
    private let rules: RuleStore?

    init(socket: Socket, loop: EventLoop, metrics: MetricsRenderer?, rules: RuleStore?) {
        connection = Connection(socket: socket, loop: loop, connecting: false)
        self.metrics = metrics
        self.rules = rules
    }

    func start() {
        do { try connection.start(delegate: self) } catch { return }
        timer.arm(after: 10_000_000_000)
    }

    func connectionReadable(_ connection: Connection) {
        let limits = HeadLimits()
        do {
            let found = try connection.inbound.withReadableBytes { (bytes) throws(HTTPError) in try scanner.scan(bytes, limits: limits, isRequest: true) }
            guard let length = found else {
                if connection.peerClosed { finish() }
                return
            }
            let head = try connection.inbound.withReadableBytes { (bytes) throws(HTTPError) in try HeadParser.parseRequest(bytes, length: length, limits: limits) }
            route(head)
        } catch {
            answer(400, "{\"error\":{\"type\":\"bad_request\",\"message\":\"\(error.reason)\"}}\n")
        }
    }

    private func route(_ head: RequestHead) {
        switch (head.method, head.target) {
        case ("GET", "/healthz"), ("HEAD", "/healthz"):
            answer(200, "ok\n", contentType: "text/plain")
        case ("GET", "/metrics"):
            answer(200, metrics?.render() ?? "", contentType: "text/plain; version=0.0.4")
        case ("GET", "/v1/rules/status"):
            answer(200, rulesStatus())
        case ("POST", "/v1/rules/reload"):
            guard let rules else { return answer(404, "{\"error\":{\"type\":\"not_found\",\"message\":\"no rules\"}}\n") }
            // Parsing and compiling happen off the loop; the answer comes back here when done.
            let bound = UncheckedSendable(self)
            let loop = connection.loop
            startThread(name: "tollgate-reload") {
                let error = rules.reload()
                loop.execute {
                    let session = bound.value
                    session.answer(error == nil ? 200 : 422, session.rulesStatus())
                }
            }
        default:
            answer(404, "{\"error\":{\"type\":\"not_found\",\"message\":\"no such admin endpoint\"}}\n")
        }
    }

    private func rulesStatus() -> String {
        var out = JSONWriter(capacity: 256)
        out.beginObject()
        if let status = rules?.status {
            out.field("version", status.version)
            out.key("loaded_at"); out.timestamp(milliseconds: status.loadedAt * 1000)
            out.field("rules", status.rules)
            out.field("agents", status.agents)
            out.field("last_error", status.lastError)
            if let at = status.lastErrorAt { out.key("last_error_at"); out.timestamp(milliseconds: at * 1000) }
        }
        out.endObject()
        out.newline()
        return String(decoding: out.bytes, as: UTF8.self)
    }

    private func answer(_ status: Int, _ body: String, contentType: String = "application/json") {
        var out: [UInt8] = []
        HeadWriter.writeLocalResponse(status: status, reason: reasonPhrase(status), headers: [("Content-Type", contentType)],
                                      body: Array(body.utf8), close: true, into: &out)
        connection.outbound.append(out)
        finish()
    }

    private func finish() {
        timer.cancel()
        connection.closeGracefully()
    }

    func connectionWritable(_ connection: Connection) {}
    func connectionConnected(_ connection: Connection, error: Errno?) {}
    func connectionFailed(_ connection: Connection, error: ConnectionError) { timer.cancel() }
    func timerFired(_ timer: Timer) { connection.close() }
}
