import TollgateHTTP
import TollgateIO

/// One request on the admin listener (`GET /healthz`; metrics and rule status come later).
/// Answers and closes: the admin API is low-volume and operator-facing.
final class AdminSession: ConnectionDelegate, TimerTarget {
    private let connection: Connection
    private var scanner = HeadScanner()
    private lazy var timer = Timer(loop: connection.loop, target: self)

    init(socket: Socket, loop: EventLoop) {
        connection = Connection(socket: socket, loop: loop, connecting: false)
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
        default:
            answer(404, "{\"error\":{\"type\":\"not_found\",\"message\":\"no such admin endpoint\"}}\n")
        }
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
