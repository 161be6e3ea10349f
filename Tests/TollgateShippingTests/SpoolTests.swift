import CTollgateShim
import Glibc
import Testing
@testable import TollgateShipping

private func temporaryDirectory() -> String {
    var template = Array("/tmp/tollgate-spool-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) } + "/spool"
}

/// Records n in `range`: id counter n, timestamp base + n, document {"n":n}.
private func records(_ range: Range<Int>) -> FramedRecords {
    var framed = FramedRecords()
    for n in range {
        Array("{\"n\":\(n)}".utf8).withUnsafeBytes {
            framed.append(timestampMilliseconds: 1_764_000_000_000 + Int64(n), id: RecordID(prefix: 7, counter: UInt64(n)), document: $0)
        }
    }
    framed.seal()
    return framed
}

extension Spool {
    fileprivate func append(_ framed: FramedRecords) throws {
        try append(framed, byteCount: framed.bytes.count, records: framed.count)
    }
}

extension SpoolBatch {
    fileprivate var documents: [String] { (0..<count).map { String(decoding: document(at: $0), as: UTF8.self) } }
    fileprivate var timestamps: [Int64] { (0..<count).map { timestampMilliseconds(at: $0) } }
}

@Suite struct SpoolTests {
    @Test func readsBackWhatWasAppendedInOrder() throws {
        let spool = try Spool(directory: temporaryDirectory())
        try spool.append(records(0..<100))
        let (records, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 60, maxBytes: 1 << 20)
        #expect(records.documents == (0..<60).map { "{\"n\":\($0)}" })
        #expect(String(decoding: records.id(at: 3), as: UTF8.self) == "00000000000000070000000000000003")
        let (rest, end) = spool.read(from: next, maxRecords: 1000, maxBytes: 1 << 20)
        #expect(rest.count == 40)
        #expect(end == spool.endPosition)
        #expect(spool.unacknowledgedRecords == 100)
    }

    @Test func readsWhatThisRunWroteFromMemoryAndTheRestFromTheFiles() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory)
        try spool.append(records(0..<50))
        let reader = try Spool(directory: directory)  // a second spool over the same files reads them
        let (onDisk, _) = reader.read(from: reader.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(onDisk.documents == (0..<50).map { "{\"n\":\($0)}" })
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
            try spool.append(records(0..<10))
            let (first, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 4, maxBytes: 1 << 20)
            #expect(first.count == 4)
            spool.acknowledge(upTo: next, records: 4)
        }
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.timestamps == (4..<10).map { 1_764_000_000_000 + Int64($0) })
        #expect(reopened.unacknowledgedRecords == 6)
    }

    @Test func cutsATornTailAndKeepsTheValidPrefix() throws {
        let directory = temporaryDirectory()
        do {
            let spool = try Spool(directory: directory)
            try spool.append(records(0..<3))
        }
        // Half an entry at the end, as a crash in the middle of a write leaves it.
        let path = directory + "/000000000001.seg"
        let fd = open(path, O_WRONLY | O_APPEND)
        let garbage: [UInt8] = [0xA6, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3]
        _ = garbage.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.count == 3)
    }

    @Test func acknowledgingDeletesFinishedSegments() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory)
        try spool.append(records(0..<5))
        let before = spool.totalBytes
        #expect(before > 0)
        let reopened = try Spool(directory: directory)  // seals segment 1, appends go to 2
        try reopened.append(records(99..<100))
        let (records, next) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.count == 6)
        reopened.acknowledge(upTo: next, records: 6)
        #expect(access(directory + "/000000000001.seg", F_OK) != 0)
        #expect(reopened.unacknowledgedRecords == 0)
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
        spool.acknowledge(upTo: next, records: all.count)
        #expect(spool.totalBytes == 0)
        try spool.append(records(7..<8))
        let (more, _) = spool.read(from: next, maxRecords: 100, maxBytes: 1 << 20)
        #expect(more.timestamps == [1_764_000_000_007])
    }

    @Test func framedRecordsSplitAtTheSpoolLimitAndRequeueInOrder() {
        var written = records(0..<10)
        // Ten entries of 59 bytes: half the bytes hold exactly five.
        let (bytes, count) = written.prefix(upToBytes: written.bytes.count / 2)
        #expect(count == 5)
        written.removeFirst(bytes: bytes, records: count)
        var queue = FramedRecords()
        Array("{\"n\":10}".utf8).withUnsafeBytes {
            queue.append(timestampMilliseconds: 1_764_000_000_010, id: RecordID(prefix: 7, counter: 10), document: $0)
        }
        queue.prepend(written)
        queue.seal()
        let batch = SpoolBatch(framed: queue)
        #expect(batch.documents == (5..<11).map { "{\"n\":\($0)}" })
        #expect(queue.bytes.withUnsafeBytes { raw in Spool.entrySize(raw, at: raw.count - 60) } == 60)
    }

    @Test func bulkBodiesNameTheDailyIndexAndTheRecordId() {
        let batch = SpoolBatch(framed: records(0..<3))
        var encoder = BulkEncoder(index: "autocode-traffic")
        var body: [UInt8] = []
        #expect(encoder.encode(batch, [2, 0], into: &body))
        var plain = [UInt8](repeating: 0, count: 4096)
        let size = body.withUnsafeBytes { gz in plain.withUnsafeMutableBytes { tg_gunzip(gz.baseAddress, gz.count, $0.baseAddress, $0.count) } }
        #expect(String(decoding: plain.prefix(max(size, 0)), as: UTF8.self) == """
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000002"}}
            {"n":2}
            {"create":{"_index":"autocode-traffic-2025.11.24","_id":"00000000000000070000000000000000"}}
            {"n":0}

            """)
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
