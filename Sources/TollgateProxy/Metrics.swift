import Synchronization
import TollgateShipping
import TollgateTLS

/// What a loop counts.
enum Counter: Int, CaseIterable {
    case connectionsAccepted, connectionsOpen, requests, tlsIntercepted, tlsSpliced, tlsFailed, tlsClientRejected
}

/// Counters one loop writes and the admin listener reads: one instance per loop, so loops never
/// contend; the lock is uncontended except while a scrape copies the values.
final class LoopCounters: Sendable {
    private let values = Mutex([Int](repeating: 0, count: Counter.allCases.count))

    func increment(_ counter: Counter, by amount: Int = 1) {
        values.withLock { $0[counter.rawValue] += amount }
    }

    func value(_ counter: Counter) -> Int { values.withLock { $0[counter.rawValue] } }
}

/// Renders `GET /metrics` in the Prometheus text format.
struct MetricsRenderer: Sendable {
    let loops: [LoopCounters]
    let flowLog: FlowLog
    let tls: TLSEngine?
    let shipper: Shipper?

    func render() -> String {
        var out = ""
        func metric(_ name: String, _ type: String, _ help: String, _ value: Int) {
            out += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        func sum(_ counter: Counter) -> Int { loops.reduce(0) { $0 + $1.value(counter) } }
        metric("tollgate_connections_accepted_total", "counter", "Client connections accepted.", sum(.connectionsAccepted))
        metric("tollgate_connections_open", "gauge", "Client connections open now.", sum(.connectionsOpen))
        metric("tollgate_http_requests_total", "counter", "HTTP requests handled (including refused ones).", sum(.requests))
        metric("tollgate_tls_intercepted_total", "counter", "TLS connections intercepted.", sum(.tlsIntercepted))
        metric("tollgate_tls_spliced_total", "counter", "TLS connections relayed untouched.", sum(.tlsSpliced))
        metric("tollgate_tls_failed_total", "counter", "TLS connections that failed toward the agent.", sum(.tlsFailed))
        metric("tollgate_tls_client_rejected_certificate_total", "counter", "Agents that refused the intercepted certificate.", sum(.tlsClientRejected))
        if let tls {
            let stats = tls.authority.statistics
            metric("tollgate_tls_certificates_cached", "gauge", "Leaf certificates in the cache.", stats.cached)
            metric("tollgate_tls_certificate_cache_capacity", "gauge", "Leaf certificate cache bound.", tls.authority.capacity)
            metric("tollgate_tls_certificates_minted_total", "counter", "Leaf certificates minted.", stats.minted)
        }
        let log = flowLog.statistics
        metric("tollgate_flow_records_written_total", "counter", "Flow records written to log.file.", log.written)
        metric("tollgate_flow_records_dropped_total", "counter", "Flow records lost (queue full or write errors).", log.dropped)
        if let shipper {
            let es = shipper.statistics
            metric("tollgate_es_records_queued", "gauge", "Records waiting for Elasticsearch (memory and spool).", es.queued)
            metric("tollgate_es_records_shipped_total", "counter", "Records Elasticsearch acknowledged (2xx or 409).", es.shipped)
            metric("tollgate_es_records_retried_total", "counter", "Record sends retried (429, 5xx, errors).", es.retried)
            metric("tollgate_es_records_dead_lettered_total", "counter", "Records refused for good, kept in dead-letter.ndjson.", es.deadLettered)
            metric("tollgate_es_records_dropped_total", "counter", "Records lost because the spool was full (drop_newest).", es.dropped)
            metric("tollgate_es_spool_bytes", "gauge", "Bytes in the on-disk spool.", es.spoolBytes)
            out += "# HELP tollgate_es_seconds_since_last_success Seconds since the last successful bulk request (-1: none yet).\n"
            out += "# TYPE tollgate_es_seconds_since_last_success gauge\n"
            out += "tollgate_es_seconds_since_last_success \(es.secondsSinceSuccess < 0 ? "-1" : String(Int(es.secondsSinceSuccess)))\n"
        }
        return out
    }
}
