#if canImport(Glibc)
import Glibc
#endif
import CTollgateShim
import Synchronization

/// What a registered descriptor reported.
public struct IOEvents: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let readable = IOEvents(rawValue: 1)
    public static let writable = IOEvents(rawValue: 2)
    /// Hang-up or error: the handler should read (to collect the error) and close.
    public static let failed = IOEvents(rawValue: 4)
}

/// What a descriptor wants to hear about.
public struct Interest: OptionSet, Sendable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = Interest(rawValue: 1)
    public static let write = Interest(rawValue: 2)
}

/// Receives readiness events for one registered descriptor on its loop's thread.
public protocol EventHandler: AnyObject {
    func handle(_ events: IOEvents)
}

/// A registration's slot plus the generation it was created under; events whose generation no
/// longer matches (the slot was reused after a close) are dropped.
public struct Registration: Equatable, Sendable {
    let slot: UInt32
    let generation: UInt32
    var tag: UInt64 { UInt64(generation) << 32 | UInt64(slot) }
}

/// One epoll event loop, run by one thread: level-triggered readiness, a timer heap, an eventfd
/// for cross-thread tasks. Everything but `execute` and `stop` must be called on the loop thread.
public final class EventLoop: @unchecked Sendable {  // loop-confined state; `tasks` is behind a Mutex
    private struct Slot {
        var handler: EventHandler?
        var fd: CInt = -1
        var generation: UInt32 = 0
        var interest: Interest = []
    }

    private let epollFD: CInt
    private let wakeFD: CInt
    private var slots: [Slot] = []
    private var freeSlots: [UInt32] = []
    /// Armed timers; loop-confined like everything else here.
    var timers = TimerHeap()
    /// Storage of emptied connection buffers, reused by the next connection that reads.
    public let blocks = BlockCache()
    private let tasks = Mutex<[@Sendable () -> Void]>([])
    private let stopping = Atomic<Bool>(false)
    /// Monotonic nanoseconds, refreshed once per loop iteration.
    public private(set) var now: UInt64 = monotonicNanoseconds()
    /// A small index so logs can name the loop.
    public let index: Int
    /// Runs once per iteration, after the events and timers: work the iteration's events left
    /// to do together (flow records are encoded there, in one run, rather than between events).
    public var afterEvents: (() -> Void)?

    public init(index: Int) throws(SystemError) {
        self.index = index
        epollFD = try syscall("epoll_create1") { tg_epoll_create() }
        wakeFD = try syscall("eventfd") { tg_eventfd() }
        _ = try syscall("epoll_ctl(wake)") { tg_epoll_ctl(epollFD, TG_EPOLL_CTL_ADD, wakeFD, UInt32(TG_EPOLLIN), UInt64.max) }
    }

    deinit {
        Glibc.close(epollFD)
        Glibc.close(wakeFD)
    }

    // MARK: Descriptors

    public func register(fd: CInt, interest: Interest, handler: EventHandler) throws(SystemError) -> Registration {
        let slot: UInt32
        if let reused = freeSlots.popLast() {
            slot = reused
        } else {
            slot = UInt32(slots.count)
            slots.append(Slot())
        }
        slots[Int(slot)].generation &+= 1
        slots[Int(slot)].handler = handler
        slots[Int(slot)].fd = fd
        slots[Int(slot)].interest = interest
        let registration = Registration(slot: slot, generation: slots[Int(slot)].generation)
        do {
            _ = try syscall("epoll_ctl(ADD)") {
                tg_epoll_ctl(epollFD, TG_EPOLL_CTL_ADD, fd, Self.epollMask(interest), registration.tag)
            }
        } catch {
            slots[Int(slot)].handler = nil
            freeSlots.append(slot)
            throw error
        }
        return registration
    }

    /// Changes what a descriptor listens for; epoll_ctl runs only when the set really changed.
    public func setInterest(_ registration: Registration, _ interest: Interest) {
        let index = Int(registration.slot)
        guard slots[index].generation == registration.generation, slots[index].handler != nil,
              slots[index].interest != interest else { return }
        slots[index].interest = interest
        _ = tg_epoll_ctl(epollFD, TG_EPOLL_CTL_MOD, slots[index].fd, Self.epollMask(interest), registration.tag)
    }

    /// Removes a descriptor; call before closing it.
    public func deregister(_ registration: Registration) {
        let index = Int(registration.slot)
        guard slots[index].generation == registration.generation, slots[index].handler != nil else { return }
        _ = tg_epoll_ctl(epollFD, TG_EPOLL_CTL_DEL, slots[index].fd, 0, 0)
        slots[index].handler = nil
        slots[index].fd = -1
        freeSlots.append(registration.slot)
    }

    private static func epollMask(_ interest: Interest) -> UInt32 {
        // RDHUP only along with reading: once the peer's FIN is seen and reading stops (a
        // half-closed tunnel), a level-triggered RDHUP would wake the loop again and again.
        var mask: UInt32 = 0
        if interest.contains(.read) { mask |= UInt32(TG_EPOLLIN | TG_EPOLLRDHUP) }
        if interest.contains(.write) { mask |= UInt32(TG_EPOLLOUT) }
        return mask
    }

    // MARK: Cross-thread work

    /// Runs `task` on this loop's thread; callable from any thread.
    public func execute(_ task: @escaping @Sendable () -> Void) {
        let wasEmpty = tasks.withLock { queue in
            queue.append(task)
            return queue.count == 1
        }
        if wasEmpty { wake() }
    }

    /// Makes `run` return after the current iteration; callable from any thread.
    public func stop() {
        stopping.store(true, ordering: .releasing)
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = Glibc.write(wakeFD, &one, 8)
    }

    // MARK: Running

    /// Runs until `stop`: waits for readiness or the next timer, dispatches, repeats.
    public func run() {
        var datas = [UInt64](repeating: 0, count: 256)
        var events = [UInt32](repeating: 0, count: 256)
        while !stopping.load(ordering: .acquiring) {
            now = monotonicNanoseconds()
            let count = tg_epoll_wait(epollFD, &datas, &events, 256, timeoutMilliseconds())
            now = monotonicNanoseconds()
            if count > 0 {
                for i in 0..<Int(count) { dispatch(tag: datas[i], mask: events[i]) }
            }
            fireTimers()
            afterEvents?()
        }
    }

    private func dispatch(tag: UInt64, mask: UInt32) {
        if tag == UInt64.max {
            var value: UInt64 = 0
            _ = Glibc.read(wakeFD, &value, 8)
            runTasks()
            return
        }
        let slot = Int(UInt32(truncatingIfNeeded: tag))
        let generation = UInt32(truncatingIfNeeded: tag >> 32)
        guard slot < slots.count, slots[slot].generation == generation,
              let handler = slots[slot].handler else { return }
        var events: IOEvents = []
        if mask & UInt32(TG_EPOLLIN | TG_EPOLLRDHUP) != 0 { events.insert(.readable) }
        if mask & UInt32(TG_EPOLLOUT) != 0 { events.insert(.writable) }
        if mask & UInt32(TG_EPOLLERR | TG_EPOLLHUP) != 0 { events.insert(.failed) }
        handler.handle(events)
    }

    private func runTasks() {
        let pending = tasks.withLock { queue in
            let taken = queue
            queue.removeAll(keepingCapacity: true)
            return taken
        }
        for task in pending { task() }
    }

    private func timeoutMilliseconds() -> CInt {
        guard let next = timers.nextDeadline else { return 1000 }
        if next <= now { return 0 }
        return CInt(min((next - now + 999_999) / 1_000_000, 1000))
    }

    private func fireTimers() {
        while let timer = timers.popDue(now: now) { timer.fire() }
    }
}

/// Monotonic clock in nanoseconds.
public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

/// Wall-clock time in milliseconds since the epoch (for record timestamps).
public func wallClockMilliseconds() -> Int64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
}
