/// A listening socket on one loop that hands accepted connections to `onAccept`.
public final class Listener: EventHandler {
    public let socket: Socket
    public let address: SocketAddress
    private unowned let loop: EventLoop
    private var registration: Registration?
    private let onAccept: (Socket, SocketAddress) -> Void
    private let onError: (SystemError) -> Void

    public init(address: SocketAddress, loop: EventLoop, reusePort: Bool,
                onAccept: @escaping (Socket, SocketAddress) -> Void,
                onError: @escaping (SystemError) -> Void) throws(SystemError) {
        self.address = address
        self.loop = loop
        self.onAccept = onAccept
        self.onError = onError
        socket = try Socket.listen(on: address, reusePort: reusePort)
        do {
            registration = try loop.register(fd: socket.fd, interest: .read, handler: self)
        } catch {
            socket.close()
            throw error
        }
    }

    /// Accepts a bounded batch per wake-up so one busy listener cannot starve the loop.
    public func handle(_ events: IOEvents) {
        for _ in 0..<64 {
            do {
                guard let (client, peer) = try socket.accept() else { return }
                onAccept(client, peer)
            } catch {
                onError(error)
                return
            }
        }
    }

    /// Stops accepting: the listening socket is closed, so new connections are refused.
    public func close() {
        guard let registration else { return }
        loop.deregister(registration)
        self.registration = nil
        socket.close()
    }
}
