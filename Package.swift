// swift-tools-version:6.0
import PackageDescription

/// The hot path runs on loop-confined classes; dynamic exclusivity checks on their stored
/// properties cost a few percent per request there, so release builds of those modules skip them.
let hotPath: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "Tollgate",
    products: [
        .executable(name: "tollgate", targets: ["tollgate"]),
        .executable(name: "tollgate-bench", targets: ["tollgate-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // The only place C headers and macros are touched: epoll, eventfd, SO_ORIGINAL_DST, and OpenSSL.
        .target(name: "CTollgateShim", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto"), .linkedLibrary("z")]),
        // The event loop, sockets, timers and the resolver pool: everything that talks to the kernel.
        .target(name: "TollgateIO", dependencies: ["CTollgateShim"], swiftSettings: hotPath),
        // HTTP/1.1 parsing and serialisation over bytes; pure, no I/O.
        .target(name: "TollgateHTTP", swiftSettings: hotPath),
        // Operator-written YAML (daemon config, later rules) read into typed values with file:line:column errors.
        .target(name: "TollgateConfig", dependencies: [
            "TollgateIO",
            .product(name: "Yams", package: "Yams"),
        ]),
        // TLS toward agents and origins: ClientHello parsing, the CA and leaf minting, OpenSSL transports.
        .target(name: "TollgateTLS", dependencies: ["CTollgateShim", "TollgateIO"]),
        // Operators' rules in, decisions out: loading, validation, compiled matchers. Pure, no I/O on the decision path.
        .target(name: "TollgatePolicy", dependencies: ["TollgateIO", "TollgateConfig"], swiftSettings: hotPath),
        // Flow records to Elasticsearch: a crash-safe disk spool and a batching, retrying shipper off the loops.
        .target(name: "TollgateShipping", dependencies: ["CTollgateShim", "TollgateIO", "TollgateHTTP", "TollgateConfig"]),
        // The daemon: listeners, proxy sessions, upstream pool, flow records.
        .target(name: "TollgateProxy", dependencies: [
            "TollgateIO", "TollgateHTTP", "TollgateConfig", "TollgateTLS", "TollgatePolicy", "TollgateShipping",
        ], swiftSettings: hotPath),
        // The command line.
        .executableTarget(name: "tollgate", dependencies: [
            "TollgateProxy",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),
        // In-process benchmarks (bench/ runs them): policy evaluation, record encoding.
        .executableTarget(name: "tollgate-bench", dependencies: ["TollgateProxy", "TollgatePolicy", "TollgateShipping"],
                          swiftSettings: hotPath),
        .testTarget(name: "TollgateHTTPTests", dependencies: ["TollgateHTTP"]),
        .testTarget(name: "TollgateIOTests", dependencies: ["TollgateIO"]),
        .testTarget(name: "TollgatePolicyTests", dependencies: ["TollgatePolicy"]),
        .testTarget(name: "TollgateTLSTests", dependencies: ["TollgateTLS"]),
        .testTarget(name: "TollgateConfigTests", dependencies: ["TollgateConfig"]),
        .testTarget(name: "TollgateShippingTests", dependencies: ["TollgateShipping"]),
        .testTarget(name: "TollgateProxyTests", dependencies: ["TollgateProxy"]),
    ]
)
