import Foundation
import Testing
import TollgateIO

@Suite struct JSONWriterTests {
    /// Every byte value at every position of a word: what JSONSerialization reads back is the input.
    @Test func escapesEveryByteWhereverItSits() throws {
        for special in (0..<0x80).map(UInt8.init) {
            for position in 0..<20 {
                var input = Array("abcdefghijklmnopqrstuvwxyz".utf8.prefix(20))
                input[position] = special
                input += Array("é✓".utf8)
                var out = JSONWriter(capacity: 8)
                out.beginObject()
                out.key("v")
                out.stringValue(bytes: input)
                out.endObject()
                let object = try #require(try JSONSerialization.jsonObject(with: Data(out.bytes)) as? [String: String])
                #expect(object["v"] == String(decoding: input, as: UTF8.self), "byte \(special) at \(position)")
            }
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
}
