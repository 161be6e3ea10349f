// tollgate: the command line — run the proxy, validate its config.
import ArgumentParser
import TollgateConfig
import TollgateProxy
import TollgateTLS

@main
struct Tollgate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "A transparent egress proxy with a policy engine for coding agents.",
        subcommands: [Run.self, CheckConfig.self, CA.self])
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

/// `tollgate ca init|show`: the CA that signs intercepted leaves.
struct CA: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ca", abstract: "Create or inspect Tollgate's certificate authority.", subcommands: [Init.self, Show.self])

    struct Init: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an ECDSA P-256 CA (ca.pem, ca-key.pem).")
        @Option(name: .long, help: "Directory for ca.pem and ca-key.pem.") var dir = "certs"
        @Flag(name: .long, help: "Replace an existing CA.") var force = false

        func run() throws {
            do {
                let (certificate, key) = try CertificateAuthority.create(directory: dir, force: force)
                print("created \(certificate) and \(key)")
                if let created = Certificate.load(path: certificate) { print("SHA-256 fingerprint: \(created.fingerprint)") }
            } catch {
                printError("tollgate ca init: \(error)")
                throw ExitCode(1)
            }
        }
    }

    struct Show: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the CA's path, subject, validity and fingerprint.")
        @Option(name: .long, help: "Directory holding ca.pem.") var dir = "certs"

        func run() throws {
            let path = dir + "/ca.pem"
            guard let certificate = Certificate.load(path: path) else {
                printError("tollgate ca show: \(path): no readable CA certificate (create one with `tollgate ca init`)")
                throw ExitCode(1)
            }
            print("certificate: \(path)")
            print("subject:     \(certificate.subject)")
            print("not before:  \(isoDate(certificate.notBefore))")
            print("not after:   \(isoDate(certificate.notAfter))")
            print("sha256:      \(certificate.fingerprint)")
        }
    }
}

func isoDate(_ unix: Int64) -> String {
    var writer = JSONWriter()
    writer.timestamp(milliseconds: unix * 1000)
    return String(decoding: writer.bytes.dropFirst().dropLast(), as: UTF8.self)
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
