import TollgateIO

/// Size limits; defaults are documented in the README's configuration section.
public struct Limits: Sendable {
    /// Longest request line accepted (414 beyond).
    public var requestLineBytes = 8192
    /// Largest request or response head (431 beyond).
    public var headerBytes = 65536
    /// Most header fields in one head (431 beyond).
    public var headerCount = 100
    /// Largest request body; 0 means unlimited (413 beyond).
    public var bodyBytes = 0
    /// Output queued toward one side before the other side stops being read.
    public var bufferHighWater = 256 * 1024
    /// Queued output below which reading resumes.
    public var bufferLowWater = 64 * 1024
    /// Idle keep-alive connections kept per upstream (per loop); enough for the agents' concurrency.
    public var upstreamIdlePerDestination = 256
    public init() {}
}

/// Timeouts in nanoseconds; defaults are documented in the README.
public struct Timeouts: Sendable {
    public var connect: UInt64 = 10_000_000_000
    public var response: UInt64 = 60_000_000_000
    public var sniff: UInt64 = 5_000_000_000
    public var header: UInt64 = 30_000_000_000
    public var idle: UInt64 = 120_000_000_000
    public var upstreamIdle: UInt64 = 60_000_000_000
    public var drain: UInt64 = 30_000_000_000
    public init() {}
}

/// Where flow records go to Elasticsearch (`log.elasticsearch`); defaults documented in the README.
public struct ElasticsearchSettings: Sendable {
    /// Node base URLs (`http://host:9200`, `https://...`), used round-robin with failover.
    public var urls: [String] = []
    public var index = "autocode-traffic"
    public var username: String?
    public var password: String?
    public var apiKey: String?
    /// CA bundle for https nodes (verification is always on).
    public var caFile: String?
    public var batchRecords = 5000
    public var batchBytes = 5 << 20
    public var flushInterval: UInt64 = 1_000_000_000
    public var spool = ""
    public var spoolBytes = 1 << 30
    /// `fail_closed`: refuse new connections while the spool is full (default: drop the newest records).
    public var failClosed = false
    public var retryMax: UInt64 = 60_000_000_000
    public var requestTimeout: UInt64 = 30_000_000_000
    /// Install the index template and ILM policy at start-up.
    public var setup = false
    public var retentionDays = 30
    public init() {}
}

/// TLS interception settings (`tls:`).
public struct TLSSettings: Sendable {
    /// Host patterns whose TLS is relayed untouched instead of intercepted.
    public var splice: [String] = []
    /// After a client refuses our certificate for a host, splice that host from then on.
    public var spliceOnClientReject = false
    /// Extra CA bundle trusted for origins, on top of the system store.
    public var upstreamCA: String?
    /// Leaf certificates kept in memory.
    public var certificateCacheSize = 1024
    public init() {}
}

/// An agent: a name and the source networks its traffic comes from.
public struct AgentDefinition: Sendable {
    public let name: String
    public let sources: [CIDRBlock]
}

/// The daemon configuration (`tollgate run --config FILE`).
public struct Config: Sendable {
    public var transparent: [SocketAddress] = []
    public var explicit: [SocketAddress] = []
    public var admin: SocketAddress?
    /// Event loops to run; `workers: auto` means one per CPU.
    public var workers = availableCPUCount()
    public var rulesDirectory: String?
    public var caCertificate: String?
    public var caKey: String?
    public var logFile: String?
    /// Days rotated flow-log files are kept.
    public var logRetentionDays = 30
    /// Header names redacted in records on top of the built-in list.
    public var redactHeaders: [String] = []
    public var elasticsearch: ElasticsearchSettings?
    public var agents: [AgentDefinition] = []
    public var limits = Limits()
    public var timeouts = Timeouts()
    public var tls = TLSSettings()

    public init() {}

    /// Reads and validates a config file; every problem is reported, located.
    public static func load(path: String) throws(ConfigErrors) -> Config {
        let text: String
        do { text = try readTextFile(path) } catch {
            throw ConfigErrors(errors: [ConfigError(file: path, line: 1, column: 1, message: "cannot read: \(error)")])
        }
        return try parse(text, file: path)
    }

    public static func parse(_ text: String, file: String) throws(ConfigErrors) -> Config {
        var config = Config()
        var errors: [ConfigError] = []
        let root: YAMLValue?
        do { root = try YAMLValue.parse(text, file: file) } catch { throw ConfigErrors(errors: [error]) }
        guard let root else {
            throw ConfigErrors(errors: [ConfigError(file: file, line: 1, column: 1, message: "empty config: at least one listener is required")])
        }
        let sections: Set<String> = ["listen", "workers", "rules", "ca", "log", "agents", "limits", "timeouts", "tls"]
        for (key, value) in root.mapping(allowed: sections, errors: &errors, context: "config") {
            switch key {
            case "listen": config.readListen(value, &errors)
            case "workers": config.readWorkers(value, &errors)
            case "rules": config.rulesDirectory = value.string(errors: &errors, context: "rules")
            case "ca":
                for (field, item) in value.mapping(allowed: ["cert", "key"], errors: &errors, context: "ca") {
                    let path = item.string(errors: &errors, context: "ca.\(field)")
                    if field == "cert" { config.caCertificate = path } else { config.caKey = path }
                }
            case "log": config.readLog(value, &errors)
            case "agents": config.agents = readAgents(value, &errors)
            case "limits": config.readLimits(value, &errors)
            case "timeouts": config.readTimeouts(value, &errors)
            case "tls": config.readTLS(value, &errors)
            default: break
            }
        }
        if config.transparent.isEmpty && config.explicit.isEmpty && errors.isEmpty {
            errors.append(root.error("listen: at least one of listen.transparent or listen.explicit is required"))
        }
        if config.limits.bufferLowWater >= config.limits.bufferHighWater {
            errors.append(root.error("limits.buffer_low_water must be below limits.buffer_high_water"))
        }
        if !errors.isEmpty { throw ConfigErrors(errors: errors) }
        return config
    }

    private mutating func readListen(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        for (key, item) in value.mapping(allowed: ["transparent", "explicit", "admin"], errors: &errors, context: "listen") {
            let addresses = item.stringList(errors: &errors, context: "listen.\(key)").compactMap { text, node in
                let address = SocketAddress(parsing: text)
                if address == nil { errors.append(node.error("listen.\(key): '\(text)' is not an addr:port (e.g. 0.0.0.0:15001 or [::]:15001)")) }
                return address
            }
            switch key {
            case "transparent": transparent = addresses
            case "explicit": explicit = addresses
            default:
                if addresses.count > 1 { errors.append(item.error("listen.admin takes one addr:port")) }
                admin = addresses.first
            }
        }
    }

    private mutating func readWorkers(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        if case .scalar(let scalar) = value.node, scalar.string == "auto" {
            workers = max(1, availableCPUCount())
        } else if let count = value.int(errors: &errors, context: "workers (a number or auto)", range: 1...256) {
            workers = count
        }
    }

    static func readAgents(_ value: YAMLValue, _ errors: inout [ConfigError]) -> [AgentDefinition] {
        value.namedMapping(errors: &errors, context: "agents").map { name, body in
            var sources: [CIDRBlock] = []
            for (key, item) in body.mapping(allowed: ["sources"], errors: &errors, context: "agent '\(name)'") where key == "sources" {
                for (text, node) in item.stringList(errors: &errors, context: "agents.\(name).sources") {
                    if let cidr = CIDRBlock(parsing: text) { sources.append(cidr) } else {
                        errors.append(node.error("agents.\(name).sources: '\(text)' is not an IP address or CIDR"))
                    }
                }
            }
            return AgentDefinition(name: name, sources: sources)
        }
    }

    private mutating func readLimits(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        let keys: [String: WritableKeyPath<Limits, Int>] = [
            "request_line_bytes": \.requestLineBytes, "header_bytes": \.headerBytes, "header_count": \.headerCount,
            "body_bytes": \.bodyBytes, "buffer_high_water": \.bufferHighWater, "buffer_low_water": \.bufferLowWater,
            "upstream_idle_per_destination": \.upstreamIdlePerDestination,
        ]
        for (key, item) in value.mapping(allowed: Set(keys.keys), errors: &errors, context: "limits") {
            let minimum = key == "body_bytes" ? 0 : 16
            if let number = item.int(errors: &errors, context: "limits.\(key)", range: minimum...(1 << 40)) {
                limits[keyPath: keys[key]!] = number
            }
        }
    }

    private mutating func readLog(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        for (key, item) in value.mapping(allowed: ["file", "retention_days", "redact_headers", "elasticsearch"], errors: &errors, context: "log") {
            switch key {
            case "file": logFile = item.string(errors: &errors, context: "log.file")
            case "retention_days": logRetentionDays = item.int(errors: &errors, context: "log.retention_days", range: 1...3650) ?? 30
            case "redact_headers": redactHeaders = item.stringList(errors: &errors, context: "log.redact_headers").map(\.0)
            default: elasticsearch = Self.readElasticsearch(item, &errors)
            }
        }
    }

    private static func readElasticsearch(_ value: YAMLValue, _ errors: inout [ConfigError]) -> ElasticsearchSettings {
        var es = ElasticsearchSettings()
        let keys: Set<String> = ["url", "index", "username", "password", "api_key", "ca", "batch_records", "batch_bytes",
                                 "flush_interval", "spool", "spool_bytes", "on_spool_full", "retry_max", "request_timeout",
                                 "setup", "retention_days"]
        var sawSpool = false
        for (key, item) in value.mapping(allowed: keys, errors: &errors, context: "log.elasticsearch") {
            let context = "log.elasticsearch.\(key)"
            switch key {
            case "url":
                es.urls = item.stringList(errors: &errors, context: context).compactMap { url, node in
                    guard url.hasPrefix("http://") || url.hasPrefix("https://") else {
                        errors.append(node.error("\(context): '\(url)' must start with http:// or https://"))
                        return nil
                    }
                    return url.hasSuffix("/") ? String(url.dropLast()) : url
                }
            case "index":
                guard let index = item.string(errors: &errors, context: context) else { break }
                // Elasticsearch's own rules, checked here so a bad name is a start-up error, not
                // every record dead-lettered; the daily suffix keeps the whole name within 255 bytes.
                if index.isEmpty || index.utf8.count > 240 || index != index.lowercased() || index.hasPrefix("-") || index.hasPrefix("_")
                    || index.hasPrefix("+") || index.contains(where: { "\\/*?\"<>| ,#:".contains($0) }) {
                    errors.append(item.error("\(context): '\(index)' is not a valid Elasticsearch index name (lower case, no spaces or \\/*?\"<>|,#:, not starting with -, _ or +)"))
                } else {
                    es.index = index
                }
            case "username": es.username = item.string(errors: &errors, context: context)
            case "password": es.password = item.string(errors: &errors, context: context)
            case "api_key": es.apiKey = item.string(errors: &errors, context: context)
            case "ca": es.caFile = item.string(errors: &errors, context: context)
            case "batch_records": es.batchRecords = item.int(errors: &errors, context: context, range: 1...1_000_000) ?? es.batchRecords
            case "batch_bytes": es.batchBytes = item.int(errors: &errors, context: context, range: 1024...(512 << 20)) ?? es.batchBytes
            case "flush_interval": es.flushInterval = item.duration(errors: &errors, context: context) ?? es.flushInterval
            case "spool": es.spool = item.string(errors: &errors, context: context) ?? ""; sawSpool = true
            case "spool_bytes": es.spoolBytes = item.int(errors: &errors, context: context, range: 1 << 16...(1 << 50)) ?? es.spoolBytes
            case "on_spool_full":
                switch item.string(errors: &errors, context: context) {
                case "drop_newest": es.failClosed = false
                case "fail_closed": es.failClosed = true
                case let other?: errors.append(item.error("\(context) must be drop_newest or fail_closed, not '\(other)'"))
                case nil: break
                }
            case "retry_max": es.retryMax = item.duration(errors: &errors, context: context) ?? es.retryMax
            case "request_timeout": es.requestTimeout = item.duration(errors: &errors, context: context) ?? es.requestTimeout
            case "setup": es.setup = item.bool(errors: &errors, context: context) ?? false
            default: es.retentionDays = item.int(errors: &errors, context: context, range: 1...3650) ?? es.retentionDays
            }
        }
        if es.urls.isEmpty { errors.append(value.error("log.elasticsearch.url is required")) }
        if !sawSpool || es.spool.isEmpty { errors.append(value.error("log.elasticsearch.spool (a directory) is required")) }
        return es
    }

    private mutating func readTLS(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        let keys: Set<String> = ["splice", "splice_on_client_reject", "upstream_ca", "certificate_cache_size"]
        for (key, item) in value.mapping(allowed: keys, errors: &errors, context: "tls") {
            switch key {
            case "splice":
                tls.splice = item.stringList(errors: &errors, context: "tls.splice").compactMap { pattern, node in
                    let body = pattern.hasPrefix("*.") ? String(pattern.dropFirst(2)) : pattern
                    if body.isEmpty || body.contains("*") || body.contains("/") {
                        errors.append(node.error("tls.splice: '\(pattern)' must be a host name or *.suffix"))
                        return nil
                    }
                    return pattern
                }
            case "splice_on_client_reject":
                tls.spliceOnClientReject = item.bool(errors: &errors, context: "tls.splice_on_client_reject") ?? false
            case "upstream_ca":
                tls.upstreamCA = item.string(errors: &errors, context: "tls.upstream_ca")
            default:
                tls.certificateCacheSize = item.int(errors: &errors, context: "tls.certificate_cache_size", range: 1...1_000_000) ?? 1024
            }
        }
    }

    private mutating func readTimeouts(_ value: YAMLValue, _ errors: inout [ConfigError]) {
        let keys: [String: WritableKeyPath<Timeouts, UInt64>] = [
            "connect": \.connect, "response": \.response, "sniff": \.sniff, "header": \.header,
            "idle": \.idle, "upstream_idle": \.upstreamIdle, "drain": \.drain,
        ]
        for (key, item) in value.mapping(allowed: Set(keys.keys), errors: &errors, context: "timeouts") {
            if let nanoseconds = item.duration(errors: &errors, context: "timeouts.\(key)") {
                if nanoseconds == 0 { errors.append(item.error("timeouts.\(key) must be positive")) }
                timeouts[keyPath: keys[key]!] = nanoseconds
            }
        }
    }
}
