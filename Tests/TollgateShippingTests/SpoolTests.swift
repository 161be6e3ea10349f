import CTollgateShim
import Glibc
import Testing
import TollgateIO
@testable import TollgateShipping

private func temporaryDirectory() -> String {
    var template = Array("/tmp/tollgate-spool-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) } + "/spool"
}

/// Records n in `range`: id counter n, timestamp base + n, document {"n":n}; handed over in
/// threes, as loop iterations do, so offsets must carry across pieces.
private func records(_ range: Range<Int>) -> BulkRecords {
    var lines = BulkLineWriter(index: "autocode-traffic")
    var records = BulkRecords()
    for n in range {
        lines.beginRecord(timestampMilliseconds: 1_764_000_000_000 + Int64(n), id: RecordID(prefix: 7, counter: UInt64(n)))
        lines.writer.beginObject()
        lines.writer.field("n", n)
        lines.writer.endObject()
        lines.writer.newline()
        lines.endRecord()
        if lines.count == 3 {
            records.append(lines)
            lines.removeAll()
        }
    }
    records.append(lines)
    return records
}

extension Spool {
    /// Appends `records` as entries of `perEntry` records each.
    fileprivate func append(_ records: BulkRecords, perEntry: Int = 10) throws {
        var entry = SpoolEntryBuilder()
        for first in stride(from: 0, to: records.count, by: perEntry) {
            entry.build(records, first..<min(first + perEntry, records.count))
            try entry.withEntry { try append(entry: $0) }
        }
    }
}

extension SpoolBatch {
    fileprivate var documents: [String] {
        guard let records = records() else { return ["(does not decompress)"] }
        return (0..<records.count).map { String(decoding: records.lines($0).document, as: UTF8.self) }
    }
}

/// gunzip through zlib, as Elasticsearch would read the body.
private func gunzip(_ body: [UInt8]) -> String? {
    var plain = [UInt8](repeating: 0, count: 1 << 20)
    let size = body.withUnsafeBytes { gz in plain.withUnsafeMutableBytes { tg_gunzip(gz.baseAddress, gz.count, $0.baseAddress, $0.count) } }
    return size < 0 ? nil : String(decoding: plain.prefix(size), as: UTF8.self)
}

private func documents(_ range: Range<Int>) -> [String] { range.map { "{\"n\":\($0)}" } }

/// Flips the byte at `offset` of entry `index` of a segment file; returns where its entries were.
private func damage(_ path: String, entry index: Int, at offset: Int) throws -> [Range<Int>] {
    let fd = open(path, O_RDWR)
    try #require(fd >= 0)
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: fileSize(path))
    _ = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    var entries: [Range<Int>] = []
    _ = bytes.withUnsafeBytes { raw in
        Spool.forEachEntry(in: raw) { start, length in
            entries.append(start..<(start + Spool.headerSize + length))
            return true
        }
    }
    var byte = bytes[entries[index].lowerBound + offset] ^ 0x40
    _ = pwrite(fd, &byte, 1, off_t(entries[index].lowerBound + offset))
    return entries
}

private func fileSize(_ path: String) -> Int {
    var info = stat()
    return stat(path, &info) == 0 ? Int(info.st_size) : -1
}

@Suite struct SpoolTests {
    @Test func readsBackWhatWasAppendedInOrderInWholeEntries() throws {
        let spool = try Spool(directory: temporaryDirectory())
        try spool.append(records(0..<100))
        #expect(spool.unacknowledged.records == 100)
        #expect(spool.unacknowledged.plainBytes == records(0..<100).bytes.count)
        let (first, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 65, maxBytes: 1 << 20)
        #expect(first.documents == documents(0..<60))
        let (rest, end) = spool.read(from: next, maxRecords: 1000, maxBytes: 1 << 20)
        #expect(rest.documents == documents(60..<100))
        #expect(end == spool.endPosition)
        // Limited by the uncompressed size too, yet never less than one entry.
        let twoEntries = records(0..<20).bytes.count
        #expect(spool.read(from: spool.acknowledgedPosition, maxRecords: 1000, maxBytes: twoEntries).batch.count == 20)
        #expect(spool.read(from: spool.acknowledgedPosition, maxRecords: 1000, maxBytes: twoEntries - 1).batch.count == 10)
        #expect(spool.read(from: spool.acknowledgedPosition, maxRecords: 3, maxBytes: 10).batch.count == 10)
    }

    @Test func entriesShrinkToTheRoomLeftAndNeverBelowOneRecord() throws {
        var entry = SpoolEntryBuilder()
        let many = records(0..<1000)
        entry.build(many, 0..<1000)
        let whole = entry.size
        let shrunk = entry.build(many, 0..<1000, fitting: whole / 3)
        let part = try #require(shrunk)
        #expect(part.lowerBound == 0 && part.count < 1000 && part.count >= 125)
        #expect(entry.size <= whole / 3)
        let all = entry.build(many, 0..<1000, fitting: whole)
        #expect(all == 0..<1000)
        let none = entry.build(many, 5..<1000, fitting: 20)
        #expect(none == nil)  // not even one record
        // What was built last is a valid entry holding exactly the records it names.
        let spool = try Spool(directory: temporaryDirectory())
        let tenth = entry.build(many, 10..<1000, fitting: whole / 10)
        #expect(tenth != nil)
        try entry.withEntry { try spool.append(entry: $0) }
        let (batch, _) = spool.read(from: spool.acknowledgedPosition, maxRecords: 10_000, maxBytes: 1 << 30)
        #expect(batch.documents == documents(10..<(10 + batch.count)))
    }

    @Test func smallSegmentsFreeAcknowledgedBytesUnderSteadyLoad() throws {
        // Appends keep coming while each batch is acknowledged, so the active segment is never
        // all acknowledged at once; with segments of a quarter of the limit, rolled ones go.
        let spool = try Spool(directory: temporaryDirectory(), segmentBytes: 4096)
        var cursor = spool.acknowledgedPosition
        try spool.append(records(0..<50))
        for round in 1...40 {
            try spool.append(records((round * 50)..<(round * 50 + 50)))
            let (batch, next) = spool.read(from: cursor, maxRecords: 50, maxBytes: 1 << 20)
            spool.acknowledge(batch, upTo: next)
            cursor = next
        }
        #expect(spool.unacknowledged.records == 50)
        #expect(spool.totalBytes < 3 * 4096)
    }

    @Test func readsAcrossSegmentRollsFromMemoryAndFromTheFiles() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory, segmentBytes: 2048)
        try spool.append(records(0..<600), perEntry: 20)  // thirty entries over several segments
        let segments = try FileManager.default.contentsOfDirectory(atPath: directory).filter { $0.hasSuffix(".seg") }
        #expect(segments.count > 2)
        // The writing spool (its last segment from memory), then a fresh one over the files.
        for reader in [spool, try Spool(directory: directory, segmentBytes: 2048)] {
            var cursor = reader.acknowledgedPosition
            var seen: [String] = []
            while true {
                let (batch, next) = reader.read(from: cursor, maxRecords: 70, maxBytes: 1 << 20)
                if batch.count == 0 && next == cursor { break }
                seen += batch.documents
                cursor = next
            }
            #expect(seen == documents(0..<600))
        }
    }

    @Test func entriesAreCompressed() throws {
        let spool = try Spool(directory: temporaryDirectory())
        let many = records(0..<2000)
        try spool.append(many, perEntry: 1000)
        #expect(spool.totalBytes * 4 < many.bytes.count)
    }

    @Test func readsWhatThisRunWroteFromMemoryAndTheRestFromTheFiles() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory)
        try spool.append(records(0..<50))
        let reader = try Spool(directory: directory)  // a second spool over the same files reads them
        let (onDisk, _) = reader.read(from: reader.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(onDisk.documents == documents(0..<50))
        // With the file emptied behind its back, the writing spool still reads every record: from memory.
        #expect(truncate(directory + "/000000000001.seg", 0) == 0)
        let (inMemory, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(inMemory.documents == onDisk.documents)
        #expect(next == spool.endPosition)
    }

    @Test func replaysUnacknowledgedRecordsAfterARestart() throws {
        let directory = temporaryDirectory()
        do {
            let spool = try Spool(directory: directory)
            try spool.append(records(0..<10), perEntry: 2)
            let (first, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 4, maxBytes: 1 << 20)
            #expect(first.count == 4)
            spool.acknowledge(first, upTo: next)
        }
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.documents == documents(4..<10))
        #expect(reopened.unacknowledged.records == 6)
    }

    @Test func cutsATornTailAndKeepsTheValidPrefix() throws {
        let directory = temporaryDirectory()
        do {
            let spool = try Spool(directory: directory)
            try spool.append(records(0..<3), perEntry: 1)
        }
        // Half an entry at the end, as a crash in the middle of a write leaves it.
        let path = directory + "/000000000001.seg"
        let fd = open(path, O_WRONLY | O_APPEND)
        let garbage: [UInt8] = [0xA7, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3]
        _ = garbage.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.documents == documents(0..<3))
    }

    /// One damaged entry in the middle of a segment costs its own records only, at start-up and
    /// while running; its bytes are kept aside for a look by hand.
    @Test func keepsTheValidEntriesAroundDamageAtStartUp() throws {
        let directory = temporaryDirectory()
        do { try Spool(directory: directory).append(records(0..<10), perEntry: 2) }
        let entries = try damage(directory + "/000000000001.seg", entry: 2, at: 20)  // in the body: a checksum mismatch
        let reopened = try Spool(directory: directory)
        #expect(reopened.unacknowledged.records == 8)
        let (batch, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(batch.documents == documents(0..<4) + documents(6..<10))
        #expect(fileSize(directory + "/damaged-1-\(entries[2].lowerBound)") == entries[2].count)
        #expect(fileSize(directory + "/000000000001.seg") == entries.last!.upperBound - entries[2].count)
    }

    @Test func damageFoundWhileRunningIsCutOutOnceItLasts() throws {
        let directory = temporaryDirectory()
        do { try Spool(directory: directory).append(records(0..<10), perEntry: 2) }
        let spool = try Spool(directory: directory)  // segment 1 is finished: appends go to 2
        try spool.append(records(10..<12))
        _ = try damage(directory + "/000000000001.seg", entry: 1, at: 4)  // its length: found again by its successor's magic
        let (before, damaged) = spool.read(from: spool.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(before.documents == documents(0..<2))
        spool.acknowledge(before, upTo: damaged)
        #expect(spool.read(from: damaged, maxRecords: 100, maxBytes: 1 << 20).batch.count == 0)
        #expect(spool.salvage(at: damaged))
        #expect(!spool.salvage(at: damaged))  // nothing left to mend
        let (after, end) = spool.read(from: damaged, maxRecords: 100, maxBytes: 1 << 20)
        #expect(after.documents == documents(4..<12))
        // The lost entry's records stayed counted until everything else was delivered.
        spool.acknowledge(after, upTo: end)
        #expect(spool.unacknowledged.records == 0)
    }

    @Test func acknowledgingDeletesFinishedSegments() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory)
        try spool.append(records(0..<5))
        #expect(spool.totalBytes > 0)
        let reopened = try Spool(directory: directory)  // seals segment 1, appends go to 2
        try reopened.append(records(99..<100))
        let (records, next) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.count == 6)
        reopened.acknowledge(records, upTo: next)
        #expect(access(directory + "/000000000001.seg", F_OK) != 0)
        #expect(reopened.unacknowledged.records == 0)
        #expect(reopened.unacknowledged.plainBytes == 0)
    }
}

@Suite struct BulkHelpersTests {
    @Test func base64MatchesTheRFC() {
        #expect(base64(Array("elastic:changeme".utf8)) == "ZWxhc3RpYzpjaGFuZ2VtZQ==")
        #expect(base64(Array("ab".utf8)) == "YWI=")
        #expect(base64([]) == "")
    }

    @Test func bulkItemsAreReadInOrderOrRefusedWhole() {
        let body = Array(#"{"took":3,"errors":true,"items":[{"create":{"status":201}},{"create":{"status":409}},{"create":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}}]}"#.utf8)
        let items = BulkResponse.items(body, expected: 3)
        #expect(items?.map(\.status) == [201, 409, 400])
        #expect(items?[2].errorType == "mapper_parsing_exception")
        #expect(BulkResponse.items(body, expected: 2) == nil)
        #expect(BulkResponse.items(Array("<html>".utf8), expected: 3) == nil)
    }

    @Test func anAnswerWithoutErrorsNeedsNoItemParsing() {
        #expect(BulkResponse.reportsNoErrors(Array(#"{"took":1,"errors":false,"items":[]}"#.utf8)))
        #expect(BulkResponse.reportsNoErrors(Array(#"{"took": 1, "errors": false, "items": []}"#.utf8)))
        #expect(!BulkResponse.reportsNoErrors(Array(#"{"took":1,"errors":true,"items":[]}"#.utf8)))
        #expect(!BulkResponse.reportsNoErrors(Array("garbage".utf8)))
    }

    @Test func fullyAcknowledgedSpoolFreesItsSpaceAtOnce() throws {
        let spool = try Spool(directory: temporaryDirectory())
        try spool.append(records(0..<50))
        #expect(spool.totalBytes > 0)
        let (all, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        spool.acknowledge(all, upTo: next)
        #expect(spool.totalBytes == 0)
        try spool.append(records(7..<8))
        let (more, _) = spool.read(from: next, maxRecords: 100, maxBytes: 1 << 20)
        #expect(more.documents == documents(7..<8))
    }

    @Test func queuedRecordsSplitByTheLimitsAndRequeueInOrder() {
        let written = records(0..<10)
        let oneRecord = written.byteRange(0..<1).count
        #expect(written.prefix(from: 2, maxRecords: 5, maxBytes: 1 << 20) == 2..<7)
        #expect(written.prefix(from: 2, maxRecords: 100, maxBytes: 3 * oneRecord) == 2..<5)
        #expect(written.prefix(from: 9, maxRecords: 100, maxBytes: 1) == 9..<10)
        var queue = records(10..<11)
        queue.prepend(written, from: 5)
        let lines = String(decoding: queue.bytes, as: UTF8.self).split(separator: "\n")
        #expect(lines.count == 12)
        #expect(lines.enumerated().filter { $0.offset % 2 == 1 }.map { String($0.element) } == documents(5..<11))
        #expect(queue.lines(5).document.elementsEqual(Array("{\"n\":10}".utf8)))
    }

    @Test func bulkBodiesJoinSpooledChunksAndNameTheDailyIndexAndTheRecordId() {
        var entry = SpoolEntryBuilder()
        var joined: [UInt8] = []
        let all = records(0..<3)
        for range in [0..<2, 2..<3] {
            entry.build(all, range)
            entry.withEntry { joined.append(contentsOf: $0) }
        }
        let batch = SpoolBatch(entry: joined.withUnsafeBytes { $0 })
        #expect(batch.count == 3)
        var bodies = BulkBody()
        var body: [UInt8] = []
        bodies.join(batch, into: &body)
        let expected = """
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000000"}}
            {"n":0}
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000001"}}
            {"n":1}
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000002"}}
            {"n":2}

            """
        #expect(gunzip(body) == expected)
        // Records chosen for a retry are compressed anew, in the order asked for.
        let decompressed = batch.records()!
        #expect(bodies.compress(decompressed, [2, 0], into: &body))
        #expect(gunzip(body) == """
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000002"}}
            {"n":2}
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000000"}}
            {"n":0}

            """)
        let target = BulkRecords.target(ofAction: decompressed.lines(1).action)
        #expect(target.index == "autocode-traffic-2025.11.24")
        #expect(target.id == "00000000000000070000000000000001")
    }

    /// Deflate chunks compressed apart, laid end to end between a gzip header and trailer, are
    /// one stream zlib reads whole; each chunk also inflates alone.
    @Test func deflateChunksJoinIntoOneGzipStream() {
        var generator = SystemRandomNumberGenerator()
        let json = Array((0..<3000).map { "{\"n\":\($0),\"url\":\"https://api.example.com/v1/items/\($0 * 7919 % 1000)\"}\n" }.joined().utf8)
        let random = (0..<50_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        let table = tg_deflate_table_new()
        defer { tg_deflate_table_free(table) }
        for input in [json, random, [], Array("x".utf8)] {
            var body: [UInt8] = []
            BulkBody.appendFrame(to: &body) { tg_gzip_start($0) }
            var crc: UInt32 = 0
            let cuts = input.isEmpty ? [0..<0] : stride(from: 0, to: input.count, by: 7001).map { $0..<min($0 + 7001, input.count) }
            for cut in cuts {
                let piece = Array(input[cut])
                var chunk = [UInt8](repeating: 0, count: tg_gzip_bound(piece.count))
                let size = piece.withUnsafeBytes { i in chunk.withUnsafeMutableBytes { tg_deflate_chunk(table, i.baseAddress, i.count, $0.baseAddress, $0.count) } }
                #expect(size > 0)
                chunk.removeLast(chunk.count - max(size, 0))
                var alone = [UInt8](repeating: 0, count: piece.count + 1)
                let inflated = chunk.withUnsafeBytes { c in alone.withUnsafeMutableBytes { tg_inflate_chunk(c.baseAddress, c.count, $0.baseAddress, $0.count) } }
                #expect(inflated == piece.count && Array(alone.prefix(piece.count)) == piece)
                body += chunk
                crc = tg_crc32_combine(crc, piece.withUnsafeBytes { tg_crc32(0, $0.baseAddress, $0.count) }, piece.count)
            }
            BulkBody.appendFrame(to: &body) { tg_gzip_finish_chunks($0, crc, UInt64(input.count)) }
            var plain = [UInt8](repeating: 0, count: input.count + 1)
            let size = body.withUnsafeBytes { gz in plain.withUnsafeMutableBytes { tg_gunzip(gz.baseAddress, gz.count, $0.baseAddress, $0.count) } }
            #expect(size == input.count && Array(plain.prefix(input.count)) == input, "\(input.count) bytes in \(cuts.count) chunks")
        }
    }

    /// Our gzip encoder against zlib's inflate: sizes around the encoder's edges, runs (matches
    /// overlapping themselves), random bytes (nothing to match), matches at the window's edge
    /// and beyond it, and repetitive JSON like a bulk body.
    @Test func gzipRoundTripsThroughZlib() {
        var generator = SystemRandomNumberGenerator()
        var inputs: [[UInt8]] = (0..<300).map { n in (0..<n).map { _ in UInt8.random(in: 0...3, using: &generator) } }
        inputs.append([UInt8](repeating: 0x41, count: 100_000))
        inputs.append((0..<200_000).map { _ in UInt8.random(in: 0...255, using: &generator) })
        let block = (0..<32_766).map { _ in UInt8.random(in: 0...255, using: &generator) }
        inputs.append(block + Array(block.prefix(600)) + block + Array(block.prefix(600)))
        inputs.append(Array((0..<20_000).map { "{\"n\":\($0),\"url\":\"https://api.example.com/v1/items/\($0 * 7919 % 1000)\"}\n" }.joined().utf8))
        for input in inputs {
            let bound = tg_gzip_bound(input.count)
            var compressed = [UInt8](repeating: 0, count: bound)
            let size = input.withUnsafeBytes { i in compressed.withUnsafeMutableBytes { tg_gzip(i.baseAddress, i.count, $0.baseAddress, bound) } }
            #expect(size > 0 && size <= bound)
            var plain = [UInt8](repeating: 0, count: input.count + 1)
            let restored = compressed.prefix(max(size, 0)).withUnsafeBytes { gz in
                plain.withUnsafeMutableBytes { tg_gunzip(gz.baseAddress, gz.count, $0.baseAddress, $0.count) }
            }
            #expect(restored == input.count)
            #expect(Array(plain.prefix(max(restored, 0))) == input, "input of \(input.count) bytes")
        }
        let small = [UInt8](repeating: 0, count: 64)
        #expect(small.withUnsafeBytes { i in [UInt8](repeating: 0, count: 10).withUnsafeBytes { tg_gzip(i.baseAddress, i.count, UnsafeMutableRawPointer(mutating: $0.baseAddress), 10) } } == -1)
    }

    @Test func crcsMatchTheStandardCheckValues() {
        #expect(Array("123456789".utf8).withUnsafeBytes { tg_crc32c($0.baseAddress, $0.count) } == 0xE306_9283)
        #expect(Array("123456789".utf8).withUnsafeBytes { tg_crc32(0, $0.baseAddress, $0.count) } == 0xCBF4_3926)
    }

    /// The folding paths (64 bytes and more, then 16 at a time, then single bytes) against a
    /// bit-at-a-time CRC, at every length up to a few folds and at odd start addresses.
    @Test func crcsMatchABitwiseReferenceAtEveryLength() {
        func bitwise(_ bytes: UnsafeRawBufferPointer, polynomial: UInt32) -> UInt32 {
            var state: UInt32 = 0xFFFF_FFFF
            for byte in bytes {
                state ^= UInt32(byte)
                for _ in 0..<8 { state = (state >> 1) ^ (polynomial & (0 &- (state & 1))) }
            }
            return ~state
        }
        var generator = SystemRandomNumberGenerator()
        let data = (0..<70_000).map { _ in UInt8.random(in: 0...255, using: &generator) }
        data.withUnsafeBytes { all in
            var lengths = Array(0...300)
            lengths += [1023, 1024, 1025, 4096 + 7, 69_997]
            for length in lengths {
                for start in [0, 1, 3] {
                    let slice = UnsafeRawBufferPointer(rebasing: all[start..<(start + length)])
                    #expect(tg_crc32c(slice.baseAddress, length) == bitwise(slice, polynomial: 0x82F6_3B78), "CRC-32C, \(length) bytes")
                    #expect(tg_crc32(0, slice.baseAddress, length) == bitwise(slice, polynomial: 0xEDB8_8320), "CRC-32, \(length) bytes")
                }
            }
            // Continuing a CRC over a second piece gives the CRC of the whole.
            let first = tg_crc32(0, all.baseAddress, 1000)
            #expect(tg_crc32(first, all.baseAddress! + 1000, 5000) == tg_crc32(0, all.baseAddress, 6000))
        }
    }

    @Test func templateIsValidJSONCoveringTheRecordFields() throws {
        let template = IndexSetup.template(index: "autocode-traffic")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(template.utf8)) as? [String: Any])
        #expect(object["priority"] as? Int == 250)
        #expect((object["index_patterns"] as? [String]) == ["autocode-traffic-*"])
        _ = try JSONSerialization.jsonObject(with: Data(IndexSetup.policy(retentionDays: 30).utf8))
    }
}

import Foundation
