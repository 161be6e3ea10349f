// The records the loops hand to the shipper: their `_bulk` lines, ids and daily indices.
import TollgateIO

/// A record's Elasticsearch `_id` (also its `event.id`): a random prefix chosen per loop at
/// start-up and that loop's counter, as 32 hex digits — unique across loops and restarts
/// without any coordination, and stable across retries so a redelivery is a harmless 409.
public struct RecordID: Sendable, Equatable {
    public let prefix: UInt64
    public let counter: UInt64

    public init(prefix: UInt64, counter: UInt64) {
        self.prefix = prefix
        self.counter = counter
    }

    /// As a JSON string value.
    public func write(into out: inout JSONWriter) {
        out.openString()
        out.hexDigits(prefix)
        out.hexDigits(counter)
        out.closeString()
    }
}

/// Records as the lines of a `_bulk` body: per record a `create` action naming its daily index
/// and `_id`, then the document, each line ending in a newline. The loops hand records over in
/// this form (a loop iteration's records in one copy, no per-record objects), the spool writer
/// compresses these bytes as they are, and item-level retries read them back decompressed.
public struct BulkRecords: Sendable {
    public private(set) var bytes: [UInt8] = []
    /// Where each record's two lines end in `bytes`.
    private var ends: [Int] = []

    public init() {}

    /// Lines read back from a spool chunk (records are line pairs); nil if they are not.
    init?(lines: [UInt8]) {
        bytes = lines
        var newlines = 0
        for (offset, byte) in lines.enumerated() where byte == 0x0A {
            newlines += 1
            if newlines % 2 == 0 { ends.append(offset + 1) }
        }
        guard newlines % 2 == 0, lines.last == 0x0A || lines.isEmpty else { return nil }
    }

    public var count: Int { ends.count }

    /// Takes over the records an event loop wrote, their bytes copied in one piece.
    public mutating func append(_ lines: borrowing BulkLineWriter) {
        let base = bytes.count
        lines.writer.withBytes { bytes.append(contentsOf: $0) }
        // Not reserveCapacity(count + n): an exact reservation per call regrows the array every
        // time, where appends grow it geometrically.
        for end in lines.ends { ends.append(base + end) }
    }

    /// The bytes of records `range`.
    func byteRange(_ range: Range<Int>) -> Range<Int> {
        (range.lowerBound == 0 ? 0 : ends[range.lowerBound - 1])..<(range.isEmpty ? 0 : ends[range.upperBound - 1])
    }

    /// The records from the first on that fit in `maxRecords` and `maxBytes` (at least one).
    func prefix(from first: Int, maxRecords: Int, maxBytes: Int) -> Range<Int> {
        let start = first == 0 ? 0 : ends[first - 1]
        var last = first + 1
        while last < min(count, first + maxRecords) && ends[last] - start <= maxBytes { last += 1 }
        return first..<min(last, count)
    }

    /// Puts the records of `earlier` from its record `first` on back in front, in order.
    mutating func prepend(_ earlier: BulkRecords, from first: Int) {
        let moved = earlier.byteRange(first..<earlier.count)
        bytes.insert(contentsOf: earlier.bytes[moved], at: 0)
        ends = earlier.ends[first...].map { $0 - moved.lowerBound } + ends.map { $0 + moved.count }
    }

    public mutating func removeAll() {
        bytes.removeAll(keepingCapacity: true)
        ends.removeAll(keepingCapacity: true)
    }

    /// The record's action line and document line, without their newlines.
    func lines(_ record: Int) -> (action: ArraySlice<UInt8>, document: ArraySlice<UInt8>) {
        let range = byteRange(record..<(record + 1))
        let actionEnd = bytes[range].firstIndex(of: 0x0A)!
        return (bytes[range.lowerBound..<actionEnd], bytes[(actionEnd + 1)..<(range.upperBound - 1)])
    }

    /// The `_index` and `_id` an action line of ours names.
    static func target(ofAction action: ArraySlice<UInt8>) -> (index: String, id: String) {
        func value(after key: String) -> String {
            let pattern = Array("\"\(key)\":\"".utf8)
            guard let start = action.indices.first(where: { action[$0...].starts(with: pattern) }) else { return "" }
            let valueStart = start + pattern.count
            let valueEnd = action[valueStart...].firstIndex(of: UInt8(ascii: "\"")) ?? action.endIndex
            return String(decoding: action[valueStart..<valueEnd], as: UTF8.self)
        }
        return (value(after: "_index"), value(after: "_id"))
    }
}

/// Records as `_bulk` lines, written where an event loop encodes them: per record its `create`
/// action, then the document straight into `writer`. A loop hands each iteration's records to
/// the shipper in one piece: one copy and one lock per iteration, where handing each record over
/// alone cost a copy of it, a lock and an append per record.
public struct BulkLineWriter: ~Copyable {
    /// The lines so far; a record's document goes here between `beginRecord` and `endRecord`.
    public var writer = JSONWriter(capacity: 16 << 10)
    /// Where each record's two lines end in `writer`.
    fileprivate var ends: [Int] = []
    private var dailyIndex: DailyIndex

    /// `index` is the configured name; records go to `<index>-YYYY.MM.DD` by their timestamp.
    public init(index: String) { dailyIndex = DailyIndex(base: index) }

    /// Records written since the last `removeAll`.
    public var count: Int { ends.count }

    /// Writes the `create` action line of the record whose document follows.
    public mutating func beginRecord(timestampMilliseconds: Int64, id: RecordID) {
        dailyIndex.writeActionStart(for: timestampMilliseconds, into: &writer)
        id.write(into: &writer)
        writer.literal("}}")
        writer.newline()
    }

    /// Ends the record whose document line (with its newline) was written since `beginRecord`.
    public mutating func endRecord() { ends.append(writer.count) }

    /// Forgets the records written, keeping the buffers for the next iteration.
    public mutating func removeAll() {
        writer.reset()
        ends.removeAll(keepingCapacity: true)
    }
}

/// Daily index names, `<base>-YYYY.MM.DD` in UTC, and the action line start naming one.
struct DailyIndex: Sendable {
    let base: String
    private var day = Int.min
    /// `{"create":{"_index":"<name>","_id":` for `day`.
    private var actionStart: [UInt8] = []

    init(base: String) { self.base = base }

    mutating func writeActionStart(for milliseconds: Int64, into writer: inout JSONWriter) {
        let recordDay = Int(milliseconds / 86_400_000)
        if recordDay != day {
            day = recordDay
            actionStart = Array("{\"create\":{\"_index\":\"\(Self.name(base, day: recordDay))\",\"_id\":".utf8)
        }
        actionStart.withUnsafeBytes { writer.rawJSON($0) }
    }

    static func name(_ base: String, day: Int) -> String {
        let (year, month, dayOfMonth) = civilDate(daysSinceEpoch: day)
        func two(_ n: Int) -> String { n < 10 ? "0\(n)" : "\(n)" }
        return "\(base)-\(year).\(two(month)).\(two(dayOfMonth))"
    }
}
