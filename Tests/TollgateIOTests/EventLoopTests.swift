import Glibc
import Testing
import Synchronization
@testable import TollgateIO

private final class Recorder: TimerTarget {
    var fired: [Int] = []
    let id: Int
    let sink: (Int) -> Void
    init(id: Int, sink: @escaping (Int) -> Void) { self.id = id; self.sink = sink }
    func timerFired(_ timer: Timer) { sink(id) }
}

@Suite struct EventLoopTests {
    @Test func timersFireInDeadlineOrderAndMovedDeadlinesAreHonoured() throws {
        let loop = try EventLoop(index: 0)
        var order: [Int] = []
        let targets = (0..<4).map { id in Recorder(id: id) { order.append($0) } }
        let timers = targets.map { Timer(loop: loop, target: $0) }
        timers[0].arm(after: 30_000_000)
        timers[1].arm(after: 10_000_000)
        timers[2].arm(after: 20_000_000)
        timers[3].arm(after: 5_000_000)
        timers[3].cancel()
        timers[1].arm(after: 40_000_000)  // moved later: must not fire at 10 ms
        let stopper = Recorder(id: 99) { _ in loop.stop() }
        Timer(loop: loop, target: stopper).arm(after: 60_000_000)
        loop.run()
        #expect(order == [2, 0, 1])
        _ = targets
    }

    @Test func executeRunsTasksFromOtherThreadsOnTheLoop() throws {
        let loop = try EventLoop(index: 0)
        let count = Atomic<Int>(0)
        let bound = LoopBox(loop)
        startThread(name: "t-exec") {
            for _ in 0..<100 { bound.loop.execute { count.add(1, ordering: .relaxed) } }
            bound.loop.execute { bound.loop.stop() }
        }
        loop.run()
        #expect(count.load(ordering: .relaxed) == 100)
    }

    @Test func aHalfClosedSocketThatIsNotReadDoesNotWakeTheLoop() throws {
        final class Counter: EventHandler { var events = 0; func handle(_ events: IOEvents) { self.events += 1 } }
        var fds: [CInt] = [-1, -1]
        #expect(socketpair(AF_UNIX, CInt(SOCK_STREAM.rawValue), 0, &fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        #expect(shutdown(fds[1], CInt(SHUT_WR)) == 0)  // the peer's FIN is pending on fds[0]
        let loop = try EventLoop(index: 0)
        let counter = Counter()
        let registration = try loop.register(fd: fds[0], interest: [], handler: counter)
        let stopper = Recorder(id: 0) { _ in loop.stop() }
        Timer(loop: loop, target: stopper).arm(after: 50_000_000)
        loop.run()
        #expect(counter.events == 0)
        loop.deregister(registration)
    }

    @Test func timerHeapPopsInOrderAndMovesRearmedTimers() throws {
        final class T: TimerTarget { func timerFired(_ timer: Timer) {} }
        let loop = try EventLoop(index: 0)
        let target = T()
        let timers = [50, 10, 40, 30, 20, 60, 5].map { deadline -> Timer in
            let timer = Timer(loop: loop, target: target)
            timer.arm(at: UInt64(deadline))
            return timer
        }
        timers[1].arm(at: 45)  // 10 -> 45: moved, not duplicated
        timers[3].cancel()     // 30 removed
        #expect(loop.timers.count == 6)
        var popped: [UInt64] = []
        while let timer = loop.timers.popDue(now: 46) { popped.append(timer.deadline) }
        #expect(popped == [5, 20, 40, 45])
        #expect(loop.timers.nextDeadline == 50)
    }
}

private final class LoopBox: @unchecked Sendable {  // only `execute`/`stop`, which are thread-safe, are used off-loop
    let loop: EventLoop
    init(_ loop: EventLoop) { self.loop = loop }
}
