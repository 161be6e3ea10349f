import CTollgateShim
import Foundation
import Testing
@testable import TollgateIO

/// Calls `body` with the address `length` bytes before the end of a page that an unmapped page
/// follows: reading or writing past those bytes faults, which kills the test run.
private func atPageEnd(_ length: Int, _ body: (UnsafeMutableRawPointer) throws -> Void) throws {
    let page = Int(sysconf(Int32(_SC_PAGESIZE)))
    let pages = (length + page - 1) / page + 1
    let mapping = try #require(mmap(nil, pages * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
    defer { munmap(mapping, pages * page) }
    #expect(mprotect(mapping + (pages - 1) * page, page, PROT_NONE) == 0)
    try body(mapping + (pages - 1) * page - length)
}

@Suite struct JSONWriterTests {
    /// Every byte value at every position of a word: what JSONSerialization reads back is the input.
    @Test func escapesEveryByteWhereverItSits() throws {
        for special in (0..<0x80).map(UInt8.init) {
            for (length, position) in (1...40).flatMap({ length in (0..<length).map { (length, $0) } }) {
                var input = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8.prefix(length))
                input[position] = special
                if length % 3 == 0 { input += Array("é✓".utf8) }
                var out = JSONWriter(capacity: 8)
                out.beginObject()
                out.key("v")
                input.withUnsafeBytes { out.stringValue($0) }
                out.endObject()
                let object = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: String])
                #expect(object["v"] == String(decoding: input, as: UTF8.self), "byte \(special) at \(position) of \(length)")
            }
        }
    }

    /// Values ending right before an unmapped page: the sixteen-byte loads of their tails must
    /// not touch it.
    @Test func readsNothingPastTheEndOfAValue() throws {
        for length in 1...40 {
            // With a quote to escape.
            var quoted = Array("Content-Type-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8.prefix(length))
            quoted[length / 2] = UInt8(ascii: "\"")
            try atPageEnd(length) { start in
                quoted.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: length) }
                var out = JSONWriter(capacity: 8)
                out.beginObject()
                out.key("v"); out.stringValue(UnsafeRawBufferPointer(start: start, count: length))
                out.endObject()
                let object = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: Any])
                #expect(object["v"] as? String == String(decoding: quoted, as: UTF8.self))
            }
        }
    }

    /// Header names and values ending right before an unmapped page: the shim's sixteen-byte
    /// loads of their tails must not touch it.
    @Test func headerObjectsReadNothingPastTheEndOfAHead() throws {
        let secrets = SecretHeaderNames([], marker: "[redacted]")
        for length in 1...40 {
            let text = Array("Content-Type-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8.prefix(length))
            let n = Int32(length)
            // The text as a name with an empty value, then as a one-byte name (the first
            // byte) and the rest as its value, ending at the page's end.
            let cases = [(tg_header_span(name_start: 0, name_count: n, value_start: n, value_count: 0),
                          [String(decoding: text, as: UTF8.self).lowercased(): ""]),
                         (tg_header_span(name_start: 0, name_count: 1, value_start: 1, value_count: n - 1),
                          [String(decoding: text.prefix(1), as: UTF8.self).lowercased(): String(decoding: text.dropFirst(), as: UTF8.self)])]
            try atPageEnd(length) { head in
                text.withUnsafeBytes { head.copyMemory(from: $0.baseAddress!, byteCount: length) }
                for (span, expected) in cases {
                    var out = JSONWriter(capacity: 8)
                    withUnsafeBytes(of: span) {
                        out.headerObject(head: UnsafeRawBufferPointer(start: head, count: length), fields: $0.baseAddress, count: 1,
                                         stride: MemoryLayout<tg_header_span>.stride, secrets: secrets)
                    }
                    let object = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: String])
                    #expect(object == expected, "length \(length)")
                }
            }
        }
    }

    /// The worst case for the room `tg_json_headers_bound` promises, written so that it ends
    /// right before an unmapped page: one-byte names, values of control bytes (six bytes each
    /// escaped), repeated names joined with ", ", secret names with empty values (the marker
    /// for nothing), and no fields at all.
    @Test func headerObjectsStayWithinTheirBound() throws {
        let marker = String(repeating: "[redacted]", count: 4)
        let secrets = SecretHeaderNames(["s"], marker: marker)
        var head: [UInt8] = []
        var spans: [tg_header_span] = []
        var expected: [String: String] = [:]
        for index in 0..<60 {
            let secret = index % 3 == 0
            let name = secret ? "s" : String(UnicodeScalar(UInt8(ascii: "A") + UInt8(index % 5)))
            let value = String(repeating: "\u{01}", count: secret ? 0 : index % 7)
            spans.append(tg_header_span(name_start: Int32(head.count), name_count: 1, value_start: Int32(head.count + 1),
                                        value_count: Int32(value.utf8.count)))
            head += Array(name.utf8) + Array(value.utf8)
            let key = name.lowercased()
            expected[key] = secret ? marker : expected[key].map { $0 + ", " + value } ?? value
        }
        for count in [0, spans.count] {
            let bound = tg_json_headers_bound(secrets.table, head.count, count)
            try atPageEnd(bound) { output in
                let written = head.withUnsafeBytes { head in
                    Array(spans.prefix(count)).withUnsafeBytes {
                        tg_json_headers(output, head.baseAddress, $0.baseAddress, count, MemoryLayout<tg_header_span>.stride, secrets.table)
                    }
                }
                #expect(written <= bound)
                let object = try #require(try JSONSerialization.jsonObject(with: Data(bytes: output, count: written)) as? [String: String])
                #expect(object == (count == 0 ? [:] : expected))
            }
        }
    }

    /// Every nibble value in every position, and random words: the digits `String(radix:)` gives.
    @Test func writesSixteenHexDigits() {
        var values: [UInt64] = [0, .max, 0x0123_4567_89AB_CDEF, 0xFEDC_BA98_7654_3210]
        for nibble in 0..<UInt64(16) { values += (0..<16).map { nibble << (4 * $0) } }
        var generator = SystemRandomNumberGenerator()
        values += (0..<1000).map { _ in generator.next() }
        for value in values {
            var out = JSONWriter(capacity: 8)
            out.openString()
            out.hexDigits(value)
            out.closeString()
            let hex = String(value, radix: 16)
            #expect(String(decoding: out.bytes, as: UTF8.self) == "\"" + String(repeating: "0", count: 16 - hex.count) + hex + "\"")
        }
    }

    @Test func writesNestedFieldsNumbersAndTimestamps() {
        var out = JSONWriter(capacity: 4)
        out.beginObject()
        out.key("@timestamp"); out.timestamp(milliseconds: 1_764_000_000_123)
        out.object("n") { w in
            w.field("min", Int.min)
            w.field("zero", 0)
            w.field("skipped", Optional<Int>.none)
            w.field("yes", true)
            w.field("ip", IPAddress(parsing: "203.0.113.10"))
        }
        out.key(dynamic: "dyn\"amic"); out.string("x")
        out.endObject()
        #expect(String(decoding: out.bytes, as: UTF8.self) ==
                #"{"@timestamp":"2025-11-24T16:00:00.123Z","n":{"min":-9223372036854775808,"zero":0,"yes":true,"ip":"203.0.113.10"},"dyn\"amic":"x"}"#)
    }

    /// IPv4 fields are formatted octet by octet into the buffer: every octet value, in every
    /// position, reads as the address's own description does, also when the field is what
    /// makes the buffer grow.
    @Test func writesEveryIPv4OctetAsTheAddressDescribesIt() {
        var out = JSONWriter(capacity: 4)
        var expected = ""
        out.beginObject()
        for value in 0...255 {
            let octets = [value, (value + 85) % 256, (value + 170) % 256, 255 - value].map(UInt8.init)
            let ip = IPAddress(bytes: octets)
            out.field("ip", ip)
            expected += (value == 0 ? "" : ",") + #""ip":"\#(ip.description)""#
            #expect(ip.description == octets.map(String.init).joined(separator: "."))
        }
        out.endObject()
        #expect(String(decoding: out.bytes, as: UTF8.self) == "{" + expected + "}")
    }

    /// Timestamps reuse the formatted date and time within a second: a writer that has seen
    /// earlier timestamps must write exactly what a fresh one does.
    @Test func timestampsWithinAndAcrossSecondsMatchFreshFormatting() {
        var shared = JSONWriter()
        let start: Int64 = 1_767_225_599_000  // 2025-12-31T23:59:59.000Z
        let steps: [Int64] = [0, 1, 998, 999, 1000, 1001, 1999, 2000, 3_600_000, 86_400_000, 86_400_999, 0, 5]
        for step in steps {
            shared.reset()
            shared.timestamp(milliseconds: start + step)
            var fresh = JSONWriter()
            fresh.timestamp(milliseconds: start + step)
            #expect(shared.bytes == fresh.bytes, "at +\(step) ms")
        }
        shared.reset()
        shared.timestamp(milliseconds: start + 1001)
        #expect(String(decoding: shared.bytes, as: UTF8.self) == "\"2026-01-01T00:00:00.001Z\"")
    }

    @Test func integersOfEveryWidth() {
        var value = 1
        var expected: [Int] = [0, Int.max, Int.min + 1, -1]
        for _ in 0..<18 { expected += [value - 1, value, value + 1]; value *= 10 }
        for number in expected {
            var out = JSONWriter()
            out.integer(number)
            #expect(String(decoding: out.bytes, as: UTF8.self) == String(number))
        }
    }
}
