import Glibc
import Testing
@testable import TollgateShipping

private func temporaryDirectory() -> String {
    var template = Array("/tmp/tollgate-spool-XXXXXX".utf8CString)
    return template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)) } + "/spool"
}

private func record(_ n: Int) -> SpooledRecord {
    let id = Array(String(repeating: "0", count: 32 - String(n).count).utf8) + Array(String(n).utf8)
    return SpooledRecord(timestampMilliseconds: 1_764_000_000_000 + Int64(n), id: id, document: Array("{\"n\":\(n)}".utf8))
}

@Suite struct SpoolTests {
    @Test func readsBackWhatWasAppendedInOrder() throws {
        let spool = try Spool(directory: temporaryDirectory())
        try spool.append((0..<100).map(record))
        let (records, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 60, maxBytes: 1 << 20)
        #expect(records.map { String(decoding: $0.document, as: UTF8.self) } == (0..<60).map { "{\"n\":\($0)}" })
        let (rest, end) = spool.read(from: next, maxRecords: 1000, maxBytes: 1 << 20)
        #expect(rest.count == 40)
        #expect(end == spool.endPosition)
        #expect(spool.unacknowledgedRecords == 100)
    }

    @Test func replaysUnacknowledgedRecordsAfterARestart() throws {
        let directory = temporaryDirectory()
        do {
            let spool = try Spool(directory: directory)
            try spool.append((0..<10).map(record))
            let (first, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 4, maxBytes: 1 << 20)
            #expect(first.count == 4)
            spool.acknowledge(upTo: next, records: 4)
        }
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.map(\.timestampMilliseconds) == (4..<10).map { 1_764_000_000_000 + Int64($0) })
        #expect(reopened.unacknowledgedRecords == 6)
    }

    @Test func cutsATornTailAndKeepsTheValidPrefix() throws {
        let directory = temporaryDirectory()
        do {
            let spool = try Spool(directory: directory)
            try spool.append((0..<3).map(record))
        }
        // Half an entry at the end, as a crash in the middle of a write leaves it.
        let path = directory + "/000000000001.seg"
        let fd = open(path, O_WRONLY | O_APPEND)
        let garbage: [UInt8] = [0xA5, 0, 0, 0, 200, 0, 0, 0, 1, 2, 3]
        _ = garbage.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        close(fd)
        let reopened = try Spool(directory: directory)
        let (records, _) = reopened.read(from: reopened.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        #expect(records.count == 3)
    }

    @Test func acknowledgingDeletesFinishedSegments() throws {
        let directory = temporaryDirectory()
        let spool = try Spool(directory: directory)
        try spool.append((0..<5).map(record))
        let before = spool.totalBytes
        #expect(before > 0)
        let reopened = try Spool(directory: directory)  // seals segment 1, appends go to 2
        try reopened.append([record(99)])
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
        try spool.append((0..<50).map(record))
        #expect(spool.totalBytes > 0)
        let (records, next) = spool.read(from: spool.acknowledgedPosition, maxRecords: 100, maxBytes: 1 << 20)
        spool.acknowledge(upTo: next, records: records.count)
        #expect(spool.totalBytes == 0)
        try spool.append([record(7)])
        let (more, _) = spool.read(from: next, maxRecords: 100, maxBytes: 1 << 20)
        #expect(more.map(\.timestampMilliseconds) == [1_764_000_000_007])
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
