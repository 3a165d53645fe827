import TensorCore

/// Everything that can be wrong with a pickle. Each case carries a `Site`: the byte offset of the
/// offending opcode, its name, and a context the caller fills (the file name) with
/// `withContext(_:)`. Messages start with the context, then say what is wrong and where:
/// `.metadata: truncated BINUNICODE at offset 123: needs 4000 bytes, 12 left`.
public enum PickleError: Error, Equatable, Sendable, CustomStringConvertible {
    /// Where a fault is.
    public struct Site: Equatable, Sendable {
        /// Offset of the opcode byte from the start of the pickle.
        public var offset: Int
        /// The opcode's pickletools name (`BINUNICODE`); `end of input` when the input ran out
        /// where an opcode was expected.
        public var opcode: String
        /// Usually the file name; empty until the caller sets it.
        public var context: String

        public init(offset: Int, opcode: String, context: String = "") {
            self.offset = offset
            self.opcode = opcode
            self.context = context
        }
    }

    /// A limit of `PickleLimits`.
    public enum Limit: String, Sendable {
        case depth = "nesting depth"
        case stackSize = "stack size"
        case memoEntries = "memo entries"
        case values = "total values"
        case bigIntBytes = "integer bytes"
        case intDigits = "integer digits"
    }

    /// An argument or length runs past the end of the input.
    case truncated(Site, needed: UInt64, available: Int)
    /// A text argument has no terminating newline before the end of the input.
    case missingNewline(Site)
    /// The input ended without a `STOP`.
    case missingStop(Site)
    /// Bytes follow the `STOP` (use `PickleReader.readPrefix` for concatenated pickles).
    case trailingBytes(Site, count: Int)
    case unknownOpcode(Site, byte: UInt8)
    case unsupportedProtocol(Site, version: Int)
    /// The opcode needs more values above the last mark than there are.
    case stackUnderflow(Site, needed: Int, available: Int)
    /// The opcode needs a `MARK` and there is none.
    case markNotFound(Site)
    /// A memo read (`GET`, `BINGET`, `LONG_BINGET`) of a key never stored.
    case memoKeyMissing(Site, key: UInt64)
    /// A malformed argument: bad number text, unquoted STRING, invalid UTF-8, negative length.
    case invalidArgument(Site, reason: String)
    /// An operand of the wrong kind (`APPEND` to a tuple, `BUILD` on an int).
    case wrongType(Site, expected: String, found: String)
    /// A valid opcode nembridge refuses: the extension registry, out-of-band buffers.
    case unsupported(Site, reason: String)
    case limitExceeded(Site, limit: Limit, maximum: Int)
    /// A global outside the reader's `PickleGlobals` allow-list (`GLOBAL os system`).
    case forbiddenGlobal(Site, module: String, name: String)
    /// A container that contains itself (possible in pickles, never in checkpoint metadata);
    /// the site is the opcode that created the container.
    case cycle(Site)

    public var site: Site {
        switch self {
        case .truncated(let site, _, _), .missingNewline(let site), .missingStop(let site),
            .trailingBytes(let site, _), .unknownOpcode(let site, _), .unsupportedProtocol(let site, _),
            .stackUnderflow(let site, _, _), .markNotFound(let site), .memoKeyMissing(let site, _),
            .invalidArgument(let site, _), .wrongType(let site, _, _), .unsupported(let site, _),
            .limitExceeded(let site, _, _), .forbiddenGlobal(let site, _, _), .cycle(let site):
            site
        }
    }

    /// The same error with `context` (usually the file name) in its site.
    public func withContext(_ context: String) -> PickleError {
        var site = self.site
        site.context = context
        switch self {
        case .truncated(_, let needed, let available): return .truncated(site, needed: needed, available: available)
        case .missingNewline: return .missingNewline(site)
        case .missingStop: return .missingStop(site)
        case .trailingBytes(_, let count): return .trailingBytes(site, count: count)
        case .unknownOpcode(_, let byte): return .unknownOpcode(site, byte: byte)
        case .unsupportedProtocol(_, let version): return .unsupportedProtocol(site, version: version)
        case .stackUnderflow(_, let needed, let available): return .stackUnderflow(site, needed: needed, available: available)
        case .markNotFound: return .markNotFound(site)
        case .memoKeyMissing(_, let key): return .memoKeyMissing(site, key: key)
        case .invalidArgument(_, let reason): return .invalidArgument(site, reason: reason)
        case .wrongType(_, let expected, let found): return .wrongType(site, expected: expected, found: found)
        case .unsupported(_, let reason): return .unsupported(site, reason: reason)
        case .limitExceeded(_, let limit, let maximum): return .limitExceeded(site, limit: limit, maximum: maximum)
        case .forbiddenGlobal(_, let module, let name): return .forbiddenGlobal(site, module: module, name: name)
        case .cycle: return .cycle(site)
        }
    }

    public var description: String {
        let site = self.site
        let prefix = site.context.isEmpty ? "" : "\(MessageText.path(site.context)): "
        let at = "\(site.opcode) at offset \(site.offset)"
        let text: String
        switch self {
        case .truncated(_, let needed, let available):
            text = "truncated \(at): needs \(needed) bytes, \(available) left"
        case .missingNewline:
            text = "truncated \(at): no newline before the end of the input"
        case .missingStop:
            text = "pickle ends without STOP at offset \(site.offset)"
        case .trailingBytes(_, let count):
            text = "\(count) bytes after STOP at offset \(site.offset)"
        case .unknownOpcode(_, let byte):
            text = "unknown opcode 0x\(String(byte, radix: 16)) at offset \(site.offset)"
        case .unsupportedProtocol(_, let version):
            text = "unsupported pickle protocol \(version) (\(at)), nembridge reads 0 to 5"
        case .stackUnderflow(_, let needed, let available):
            text = "stack underflow in \(at): needs \(needed) values, \(available) above the mark"
        case .markNotFound:
            text = "\(at) needs a MARK and there is none"
        case .memoKeyMissing(_, let key):
            text = "\(at) reads memo key \(key), which was never stored"
        case .invalidArgument(_, let reason):
            text = "invalid \(at): \(reason)"
        case .wrongType(_, let expected, let found):
            text = "\(at) expects \(expected), found \(found)"
        case .unsupported(_, let reason):
            text = "unsupported \(at): \(reason)"
        case .limitExceeded(_, let limit, let maximum):
            text = "\(at) exceeds the limit of \(maximum) \(limit.rawValue)"
        case .forbiddenGlobal(_, let module, let name):
            text = "\(at) names `\(MessageText.quoted(module)).\(MessageText.quoted(name))`, which is not one of the globals this format uses"
        case .cycle:
            text = "the container made by \(at) contains itself"
        }
        return prefix + text
    }
}
