/// Something a `Timer` calls back on its loop.
public protocol TimerTarget: AnyObject {
    func timerFired(_ timer: Timer)
}

/// A re-armable deadline owned by a connection. A timer sits in its loop's heap at most once,
/// so re-arming it on every request moves one entry instead of piling up stale ones.
///
/// The timer holds its target strongly while armed and not at all otherwise: a target that
/// goes away with its timer armed is kept until the deadline (its callback must then be
/// harmless), never called after it is freed. Not `weak`: a weak reference gives the target
/// a side table, which sends every retain and release of it — sessions and connections, many
/// times per request — down the runtime's slow path.
public final class Timer {
    // The loop outlives everything registered on it; `unowned(unsafe)` skips the atomic
    // check a plain `unowned` load costs on every arm.
    private unowned(unsafe) let loop: EventLoop
    private unowned(unsafe) let owner: TimerTarget
    /// `owner`, held while armed.
    private var armedTarget: TimerTarget?
    /// When the target wants to be called; `UInt64.max` means disarmed.
    public private(set) var deadline: UInt64 = .max
    /// Position in the loop's heap, or -1.
    var heapIndex = -1

    /// `target` must hold the timer (or outlive it): the timer keeps it only while armed.
    public init(loop: EventLoop, target: TimerTarget) {
        self.loop = loop
        owner = target
    }

    /// Arms the timer to fire `nanoseconds` from the loop's current time.
    public func arm(after nanoseconds: UInt64) { arm(at: loop.now &+ nanoseconds) }

    public func arm(at deadline: UInt64) {
        if armedTarget == nil { armedTarget = owner }
        self.deadline = deadline
        loop.timers.schedule(self)
    }

    public func cancel() {
        deadline = .max
        loop.timers.remove(self)
        armedTarget = nil
    }

    public var isArmed: Bool { deadline != .max }

    func fire() {
        deadline = .max
        let target = armedTarget
        armedTarget = nil
        target?.timerFired(self)
    }
}

/// A binary min-heap of timers keyed by deadline; each timer knows its own index, so moving or
/// removing one is O(log n).
struct TimerHeap {
    private var items: [Timer] = []

    var nextDeadline: UInt64? { items.first?.deadline }
    var count: Int { items.count }

    mutating func schedule(_ timer: Timer) {
        if timer.heapIndex < 0 {
            timer.heapIndex = items.count
            items.append(timer)
        }
        siftUp(timer.heapIndex)
        siftDown(timer.heapIndex)
    }

    mutating func remove(_ timer: Timer) {
        let index = timer.heapIndex
        guard index >= 0 else { return }
        timer.heapIndex = -1
        let last = items.removeLast()
        guard index < items.count else { return }
        items[index] = last
        last.heapIndex = index
        siftUp(index)
        siftDown(last.heapIndex)
    }

    /// Removes and returns the earliest timer if it is due.
    mutating func popDue(now: UInt64) -> Timer? {
        guard let first = items.first, first.deadline <= now else { return nil }
        remove(first)
        return first
    }

    private mutating func siftUp(_ start: Int) {
        var child = start
        while child > 0 {
            let parent = (child - 1) / 2
            if items[parent].deadline <= items[child].deadline { break }
            swapAt(parent, child)
            child = parent
        }
    }

    private mutating func siftDown(_ start: Int) {
        var parent = start
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count && items[left].deadline < items[smallest].deadline { smallest = left }
            if right < items.count && items[right].deadline < items[smallest].deadline { smallest = right }
            if smallest == parent { return }
            swapAt(parent, smallest)
            parent = smallest
        }
    }

    private mutating func swapAt(_ a: Int, _ b: Int) {
        items.swapAt(a, b)
        items[a].heapIndex = a
        items[b].heapIndex = b
    }
}
