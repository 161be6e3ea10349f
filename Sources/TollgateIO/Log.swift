#if canImport(Glibc)
import Glibc
#endif

/// Operational messages for the operator, one line each on stderr (journald adds timestamps).
/// A single write(2) per line keeps lines from different threads whole.
public enum Log {
    public static func info(_ message: String) { emit("info", message) }
    public static func warning(_ message: String) { emit("warning", message) }
    public static func error(_ message: String) { emit("error", message) }

    private static func emit(_ level: String, _ message: String) {
        var line = Array("tollgate \(level): \(message)\n".utf8)
        _ = line.withUnsafeMutableBytes { write(2, $0.baseAddress, $0.count) }
    }
}
