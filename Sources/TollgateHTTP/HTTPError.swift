// TollgateHTTP: HTTP/1.1 message parsing and serialisation over bytes (RFC 9110/9112); pure, no I/O.
//
// Parsers read a borrowed `UnsafeRawBufferPointer` view of a connection's input buffer and only
// ever read from it; they never keep it past the call.

/// Why a message was refused; each case maps to the status Tollgate answers with.
public enum HTTPError: Error, Equatable, Sendable {
    case badRequestLine
    case requestLineTooLong
    case headerBlockTooLarge
    case tooManyHeaders
    case invalidHeaderName
    case whitespaceBeforeColon
    case obsoleteLineFolding
    case invalidHeaderValue
    case bareLineFeed
    case contentLengthAndTransferEncoding
    case conflictingContentLength
    case invalidContentLength
    case unsupportedTransferEncoding
    case invalidChunkSize
    case invalidChunkFraming
    case missingHost
    case badStatusLine
    case unsupportedVersion

    /// The status code a client gets for a request with this defect.
    public var status: Int {
        switch self {
        case .requestLineTooLong: return 414
        case .headerBlockTooLarge, .tooManyHeaders: return 431
        case .unsupportedVersion: return 505
        default: return 400
        }
    }

    /// The error type an agent reads in Tollgate's JSON error body, by status.
    public var errorType: String {
        switch status {
        case 414: return "uri_too_long"
        case 431: return "header_too_large"
        case 505: return "http_version_not_supported"
        default: return "bad_request"
        }
    }

    /// A stable machine-readable name of the exact defect, used in messages and flow records.
    public var reason: String {
        switch self {
        case .badRequestLine: return "bad_request_line"
        case .requestLineTooLong: return "request_line_too_long"
        case .headerBlockTooLarge: return "header_block_too_large"
        case .tooManyHeaders: return "too_many_headers"
        case .invalidHeaderName: return "invalid_header_name"
        case .whitespaceBeforeColon: return "whitespace_before_colon"
        case .obsoleteLineFolding: return "obsolete_line_folding"
        case .invalidHeaderValue: return "invalid_header_value"
        case .bareLineFeed: return "bare_line_feed"
        case .contentLengthAndTransferEncoding: return "content_length_and_transfer_encoding"
        case .conflictingContentLength: return "conflicting_content_length"
        case .invalidContentLength: return "invalid_content_length"
        case .unsupportedTransferEncoding: return "unsupported_transfer_encoding"
        case .invalidChunkSize: return "invalid_chunk_size"
        case .invalidChunkFraming: return "invalid_chunk_framing"
        case .missingHost: return "missing_host"
        case .badStatusLine: return "bad_status_line"
        case .unsupportedVersion: return "unsupported_http_version"
        }
    }
}

/// Size limits applied while parsing a head.
public struct HeadLimits: Sendable {
    public var requestLineBytes: Int
    public var headerBytes: Int
    public var headerCount: Int

    public init(requestLineBytes: Int = 8192, headerBytes: Int = 65536, headerCount: Int = 100) {
        self.requestLineBytes = requestLineBytes
        self.headerBytes = headerBytes
        self.headerCount = headerCount
    }
}
