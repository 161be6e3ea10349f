/// Something a `Timer` calls back on its loop.
public protocol TimerTarget: AnyObject {
    func timerFired(_ timer: Timer)
}

/// A re-armable deadline owned by a connection. Moving the deadline later costs nothing (the
/// heap entry fires early and re-queues itself), so per-request re-arming never touches the heap.
public final class Timer {
    private unowned let loop: EventLoop
    private weak var target: TimerTarget?
    /// When the target wants to be called; `UInt64.max` means disarmed.
    public private(set) var deadline: UInt64 = .max
    /// The earliest heap entry still pending for this timer.
    private var queuedAt: UInt64 = .max

    public init(loop: EventLoop, target: TimerTarget) {
        self.loop = loop
        self.target = target
    }

    /// Arms the timer to fire `nanoseconds` from the loop's current time.
    public func arm(after nanoseconds: UInt64) { arm(at: loop.now &+ nanoseconds) }

    public func arm(at deadline: UInt64) {
        self.deadline = deadline
        if deadline < queuedAt {
            queuedAt = deadline
            loop.enqueue(self, at: deadline)
        }
    }

    public func cancel() { deadline = .max }

    public var isArmed: Bool { deadline != .max }

    func heapEntryFired(at entry: UInt64, now: UInt64) {
        if entry == queuedAt { queuedAt = .max }
        guard deadline != .max else { return }
        if deadline <= now {
            deadline = .max
            target?.timerFired(self)
        } else if deadline < queuedAt {
            queuedAt = deadline
            loop.enqueue(self, at: deadline)
        }
    }
}

/// A binary min-heap of (deadline, timer).
struct TimerHeap {
    private var items: [(UInt64, Timer)] = []

    var nextDeadline: UInt64? { items.first?.0 }

    mutating func push(_ deadline: UInt64, _ timer: Timer) {
        items.append((deadline, timer))
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent].0 <= items[child].0 { break }
            items.swapAt(parent, child)
            child = parent
        }
    }

    mutating func popDue(now: UInt64) -> (UInt64, Timer)? {
        guard let first = items.first, first.0 <= now else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var parent = 0
            while true {
                let left = 2 * parent + 1, right = left + 1
                var smallest = parent
                if left < items.count && items[left].0 < items[smallest].0 { smallest = left }
                if right < items.count && items[right].0 < items[smallest].0 { smallest = right }
                if smallest == parent { break }
                items.swapAt(parent, smallest)
                parent = smallest
            }
        }
        return first
    }
}
