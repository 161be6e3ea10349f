import Foundation
import Testing
import TollgateIO

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
    /// not touch it (a fault here kills the test run).
    @Test func readsNothingPastTheEndOfAValue() throws {
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))
        let mapping = try #require(mmap(nil, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(mapping, 2 * page) }
        #expect(mprotect(mapping + page, page, PROT_NONE) == 0)
        for length in 1...40 {
            let start = mapping + page - length
            // With a quote to escape.
            var quoted = Array("Content-Type-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789".utf8.prefix(length))
            quoted[length / 2] = UInt8(ascii: "\"")
            quoted.withUnsafeBytes { start.copyMemory(from: $0.baseAddress!, byteCount: length) }
            var out = JSONWriter(capacity: 8)
            out.beginObject()
            out.key("v"); out.stringValue(UnsafeRawBufferPointer(start: start, count: length))
            out.endObject()
            let object = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: Any])
            #expect(object["v"] as? String == String(decoding: quoted, as: UTF8.self))
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
