// tollgate: the command line — run the proxy, validate its config.
import ArgumentParser
import TollgateConfig
import TollgateProxy

@main
struct Tollgate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A transparent egress proxy with a policy engine for coding agents.",
        subcommands: [Run.self, CheckConfig.self])
}

/// `tollgate run --config FILE`
struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the proxy in the foreground.")

    @Option(name: .long, help: "Path to the YAML config file.")
    var config: String

    func run() throws {
        let loaded = try loadConfig(config)
        do {
            try Daemon(config: loaded).run()
        } catch {
            printError("tollgate: cannot start: \(error)")
            throw ExitCode(1)
        }
    }
}

/// `tollgate check-config --config FILE`
struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate a config file and exit.")

    @Option(name: .long, help: "Path to the YAML config file.")
    var config: String

    func run() throws {
        _ = try loadConfig(config)
        print("\(config): ok")
    }
}

func loadConfig(_ path: String) throws -> Config {
    do {
        return try Config.load(path: path)
    } catch {
        printError(error.description)
        throw ExitCode(1)
    }
}

func printError(_ message: String) {
    var standardError = StandardError()
    print(message, to: &standardError)
}

struct StandardError: TextOutputStream {
    mutating func write(_ string: String) {
        var bytes = Array(string.utf8)
        _ = bytes.withUnsafeMutableBytes { Glibc.write(2, $0.baseAddress, $0.count) }
    }
}

import Glibc
