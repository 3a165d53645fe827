/// Reads pickles (protocols 0 to 5) into `PickleValue` trees without importing or calling
/// anything: what `pickle.loads` would build is described, never built.
///
/// Python: `pickle.loads`; DCP reads `.metadata` this way, torch reads `data.pkl` this way.
public struct PickleReader {
    /// The value of a pickle that spans all of `bytes`: exactly one pickle, ending with `STOP`.
    /// A global outside `globals` throws `forbiddenGlobal` at the opcode that names it.
    public static func read(
        _ bytes: [UInt8], limits: PickleLimits = .default, globals: PickleGlobals = .any
    ) throws -> PickleValue {
        try bytes.withUnsafeBytes { try read($0, limits: limits, globals: globals) }
    }

    /// The value of a pickle that spans all of `bytes`.
    public static func read(
        _ bytes: UnsafeRawBufferPointer, limits: PickleLimits = .default, globals: PickleGlobals = .any
    ) throws -> PickleValue {
        let (value, end) = try readPrefix(bytes, limits: limits, globals: globals)
        guard end == bytes.count else {
            throw PickleError.trailingBytes(.init(offset: end - 1, opcode: "STOP"), count: bytes.count - end)
        }
        return value
    }

    /// The first pickle in `bytes` and the offset just after its `STOP`, for streams of
    /// several pickles (the legacy non-zip `torch.save` format).
    public static func readPrefix(
        _ bytes: UnsafeRawBufferPointer, limits: PickleLimits = .default, globals: PickleGlobals = .any
    ) throws -> (value: PickleValue, end: Int) {
        try PickleMachine(input: bytes, limits: limits, globals: globals).run()
    }

    /// One opcode of a pickle, as `pickletools.genops` lists it.
    public struct Instruction: Sendable, Equatable {
        public var offset: Int
        public var opcode: PickleOpcode
    }

    /// The opcodes of a pickle up to its `STOP`, with their offsets, without running them
    /// (`pickletools.genops`). Checks only that each opcode is known and its argument fits.
    public static func instructions(_ bytes: [UInt8]) throws -> [Instruction] {
        var result: [Instruction] = []
        var position = 0
        func site(_ offset: Int, _ name: String) -> PickleError.Site { .init(offset: offset, opcode: name) }
        while position < bytes.count {
            let offset = position
            guard let opcode = PickleOpcode(rawValue: bytes[position]) else {
                throw PickleError.unknownOpcode(site(offset, "unknown"), byte: bytes[position])
            }
            position += 1
            result.append(Instruction(offset: offset, opcode: opcode))
            let left = bytes.count - position
            switch opcode.argument {
            case .none:
                break
            case .fixed(let width):
                guard width <= left else {
                    throw PickleError.truncated(site(offset, opcode.name), needed: UInt64(width), available: left)
                }
                position += width
            case .line, .twoLines:
                for _ in 0..<(opcode.argument.isTwoLines ? 2 : 1) {
                    guard let newline = bytes[position...].firstIndex(of: 0x0A) else {
                        throw PickleError.missingNewline(site(offset, opcode.name))
                    }
                    position = newline + 1
                }
            case .counted(let width):
                guard width <= left else {
                    throw PickleError.truncated(site(offset, opcode.name), needed: UInt64(width), available: left)
                }
                var length: UInt64 = 0
                for index in (0..<width).reversed() { length = length << 8 | UInt64(bytes[position + index]) }
                if width == 4 && (opcode == .binString || opcode == .long4) && length & 0x8000_0000 != 0 {
                    throw PickleError.invalidArgument(site(offset, opcode.name), reason: "negative length")
                }
                position += width
                guard length <= UInt64(bytes.count - position) else {
                    throw PickleError.truncated(site(offset, opcode.name), needed: length, available: bytes.count - position)
                }
                position += Int(length)
            }
            if opcode == .stop { return result }
        }
        throw PickleError.missingStop(site(bytes.count, "end of input"))
    }
}

extension PickleOpcode.Argument {
    var isTwoLines: Bool {
        if case .twoLines = self { return true }
        return false
    }
}
