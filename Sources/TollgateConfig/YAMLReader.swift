// TollgateConfig: operator-written YAML (the daemon config, later the rules) read into typed
// values, with every mistake reported as file:line:column.
import Yams

/// A mistake in an operator-written file, located to the character.
public struct ConfigError: Error, CustomStringConvertible, Sendable, Equatable {
    public let file: String
    public let line: Int
    public let column: Int
    public let message: String

    public init(file: String, line: Int, column: Int, message: String) {
        self.file = file
        self.line = line
        self.column = column
        self.message = message
    }

    public var description: String { "\(file):\(line):\(column): \(message)" }
}

/// Several errors found in one pass, so operators fix them all at once.
public struct ConfigErrors: Error, CustomStringConvertible, Sendable {
    public let errors: [ConfigError]
    public init(errors: [ConfigError]) { self.errors = errors }
    public var description: String { errors.map(\.description).joined(separator: "\n") }
}

/// A YAML node plus the file it came from: typed accessors that collect located errors.
public struct YAMLValue {
    public let node: Node
    public let file: String

    public init(node: Node, file: String) {
        self.node = node
        self.file = file
    }

    /// Parses `text`; syntax errors carry the parser's position.
    public static func parse(_ text: String, file: String) throws(ConfigError) -> YAMLValue? {
        do {
            guard let node = try Yams.compose(yaml: text) else { return nil }
            return YAMLValue(node: node, file: file)
        } catch let error as YamlError {
            throw locate(error, file: file)
        } catch {
            throw ConfigError(file: file, line: 1, column: 1, message: "\(error)")
        }
    }

    public var line: Int { node.mark?.line ?? 1 }
    public var column: Int { node.mark?.column ?? 1 }

    public func error(_ message: String) -> ConfigError {
        ConfigError(file: file, line: line, column: column, message: message)
    }

    /// The pairs of a mapping, with keys checked against `allowed`.
    public func mapping(allowed: Set<String>, errors: inout [ConfigError], context: String) -> [(String, YAMLValue)] {
        guard case .mapping(let mapping) = node else {
            errors.append(error("\(context) must be a mapping"))
            return []
        }
        var result: [(String, YAMLValue)] = []
        for (key, value) in mapping {
            let keyValue = YAMLValue(node: key, file: file)
            guard let name = key.scalar?.string else {
                errors.append(keyValue.error("\(context): keys must be strings"))
                continue
            }
            if !allowed.isEmpty && !allowed.contains(name) {
                let known = allowed.sorted().joined(separator: ", ")
                errors.append(keyValue.error("unknown key '\(name)' in \(context) (expected one of: \(known))"))
                continue
            }
            result.append((name, YAMLValue(node: value, file: file)))
        }
        return result
    }

    /// The pairs of a mapping whose keys are free-form names (agent names, say).
    public func namedMapping(errors: inout [ConfigError], context: String) -> [(String, YAMLValue)] {
        mapping(allowed: [], errors: &errors, context: context)
    }

    public func string(errors: inout [ConfigError], context: String) -> String? {
        guard case .scalar(let scalar) = node else {
            errors.append(error("\(context) must be a string"))
            return nil
        }
        return scalar.string
    }

    public func int(errors: inout [ConfigError], context: String, range: ClosedRange<Int>) -> Int? {
        guard case .scalar(let scalar) = node, let value = Int(scalar.string) else {
            errors.append(error("\(context) must be an integer"))
            return nil
        }
        guard range.contains(value) else {
            errors.append(error("\(context) must be between \(range.lowerBound) and \(range.upperBound), not \(value)"))
            return nil
        }
        return value
    }

    public func bool(errors: inout [ConfigError], context: String) -> Bool? {
        guard case .scalar(let scalar) = node else {
            errors.append(error("\(context) must be true or false"))
            return nil
        }
        switch scalar.string.lowercased() {
        case "true", "yes", "on": return true
        case "false", "no", "off": return false
        default:
            errors.append(error("\(context) must be true or false, not '\(scalar.string)'"))
            return nil
        }
    }

    /// A list of strings; a single string is accepted as a one-element list.
    public func stringList(errors: inout [ConfigError], context: String) -> [(String, YAMLValue)] {
        switch node {
        case .scalar(let scalar):
            return [(scalar.string, self)]
        case .sequence(let sequence):
            var result: [(String, YAMLValue)] = []
            for item in sequence {
                let value = YAMLValue(node: item, file: file)
                if let text = value.string(errors: &errors, context: "\(context) item") { result.append((text, value)) }
            }
            return result
        default:
            errors.append(error("\(context) must be a list of strings"))
            return []
        }
    }

    /// A duration: `250ms`, `10s`, `2m`, `1h`, or a plain number of seconds; in nanoseconds.
    public func duration(errors: inout [ConfigError], context: String) -> UInt64? {
        guard let text = string(errors: &errors, context: context) else { return nil }
        let units: [(String, Double)] = [("ms", 1e6), ("s", 1e9), ("m", 60e9), ("h", 3600e9)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            if let number = Double(text.dropLast(suffix.count)), number >= 0 { return UInt64(number * scale) }
        }
        if let number = Double(text), number >= 0 { return UInt64(number * 1e9) }
        errors.append(error("\(context) must be a duration like 250ms, 10s, 2m or 1h, not '\(text)'"))
        return nil
    }

    private static func locate(_ error: YamlError, file: String) -> ConfigError {
        func syntax(_ context: YamlError.Context?, _ problem: String, _ mark: Mark) -> ConfigError {
            let prefix = context.map { "\($0.text), " } ?? ""
            return ConfigError(file: file, line: mark.line, column: mark.column, message: "YAML syntax: \(prefix)\(problem)")
        }
        switch error {
        case .scanner(let context, let problem, let mark, _): return syntax(context, problem, mark)
        case .parser(let context, let problem, let mark, _): return syntax(context, problem, mark)
        case .composer(let context, let problem, let mark, _): return syntax(context, problem, mark)
        case .duplicatedKeysInMapping(let duplicates, let context):
            return syntax(nil, "duplicate keys: \(duplicates.joined(separator: ", ")) \(context.text)", context.mark)
        default: return ConfigError(file: file, line: 1, column: 1, message: "YAML: \(error)")
        }
    }
}
