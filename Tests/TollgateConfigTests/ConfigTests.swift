import Testing
import TollgateIO
@testable import TollgateConfig

@Suite struct ConfigTests {
    @Test func readsEveryDocumentedKey() throws {
        let config = try Config.parse("""
            listen:
              transparent: ["0.0.0.0:15001", "[::]:15001"]
              explicit: ["127.0.0.1:3128"]
              admin: "127.0.0.1:9901"
            workers: 3
            rules: rules/
            ca: { cert: certs/ca.pem, key: certs/ca-key.pem }
            log: { file: /var/log/tollgate/flows.ndjson }
            agents:
              worker-1: { sources: ["10.99.0.2", "10.99.1.0/24"] }
            limits: { body_bytes: 1048576, header_count: 50 }
            timeouts: { connect: 250ms, drain: 2m, idle: 30 }
            """, file: "t.yaml")
        #expect(config.transparent.map(\.description) == ["0.0.0.0:15001", "[::]:15001"])
        #expect(config.explicit.first?.port == 3128)
        #expect(config.admin?.description == "127.0.0.1:9901")
        #expect(config.workers == 3)
        #expect(config.rulesDirectory == "rules/")
        #expect(config.caKey == "certs/ca-key.pem")
        #expect(config.logFile == "/var/log/tollgate/flows.ndjson")
        #expect(config.limits.bodyBytes == 1_048_576)
        #expect(config.limits.headerCount == 50)
        #expect(config.timeouts.connect == 250_000_000)
        #expect(config.timeouts.drain == 120_000_000_000)
        #expect(config.timeouts.idle == 30_000_000_000)
        #expect(config.agents.first?.name == "worker-1")
        #expect(config.agents.first?.sources.map(\.description) == ["10.99.0.2", "10.99.1.0/24"])
    }

    @Test func workersAutoMeansOnePerCPU() throws {
        let config = try Config.parse("listen: { transparent: [':15001'] }\nworkers: auto\n", file: "t.yaml")
        #expect(config.workers == availableCPUCount())
    }

    @Test func reportsUnknownKeysAndBadValuesWithTheirPosition() {
        do {
            _ = try Config.parse("""
                listen:
                  transparent: ["0.0.0.0:99999"]
                  explicitt: ["127.0.0.1:3128"]
                workers: many
                timeouts:
                  connect: soon
                """, file: "bad.yaml")
            Issue.record("bad config accepted")
        } catch {
            let lines = error.errors.map(\.description)
            #expect(lines.contains("bad.yaml:2:17: listen.transparent: '0.0.0.0:99999' is not an addr:port (e.g. 0.0.0.0:15001 or [::]:15001)"))
            #expect(lines.contains { $0.hasPrefix("bad.yaml:3:3: unknown key 'explicitt' in listen") })
            #expect(lines.contains("bad.yaml:4:10: workers (a number or auto) must be an integer"))
            #expect(lines.contains("bad.yaml:6:12: timeouts.connect must be a duration like 250ms, 10s, 2m or 1h, not 'soon'"))
        }
    }

    @Test func refusesIndexNamesElasticsearchWouldRefuse() throws {
        func parse(index: String) throws(ConfigErrors) -> Config {
            try Config.parse("listen: { transparent: [':15001'] }\nlog:\n  elasticsearch:\n    url: [http://127.0.0.1:9200]\n    spool: /tmp/s\n    index: '\(index)'\n", file: "es.yaml")
        }
        #expect(try parse(index: "agents-traffic").elasticsearch?.index == "agents-traffic")
        for bad in ["Traffic", "a b", "a\"b", "_x", "a,b", ""] {
            do {
                _ = try parse(index: bad)
                Issue.record("index '\(bad)' accepted")
            } catch {
                #expect(error.errors.map(\.description).contains { $0.hasPrefix("es.yaml:6:12: log.elasticsearch.index: '\(bad)' is not a valid Elasticsearch index name") },
                        "\(error.errors)")
            }
        }
    }

    @Test func reportsYAMLSyntaxErrorsWithTheirPosition() {
        do {
            _ = try Config.parse("listen:\n  transparent: [\"a\"\n", file: "broken.yaml")
            Issue.record("broken YAML accepted")
        } catch {
            #expect(error.errors.first?.file == "broken.yaml")
            #expect(error.errors.first?.line == 3)
            #expect(error.errors.first?.message.hasPrefix("YAML syntax") == true)
        }
    }

    @Test func requiresAListener() {
        #expect(throws: ConfigErrors.self) { try Config.parse("workers: 1\n", file: "t.yaml") }
    }
}
