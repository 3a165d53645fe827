import Foundation
import MegatronCheckpoint
import TensorCore
import TorchPickle

/// Where a dry run's plan text goes, line by line through a bounded buffer: straight to standard
/// output for the CLI (a plan of 450,000 chunks prints ~100,000 lines; built as one `String` it
/// took 55 MB), or collected into a string for tests.
public final class PlanTextOutput {
    private var buffer: [UInt8] = []
    private let sink: ([UInt8]) -> Void

    /// Lines are handed to `sink` in pieces of about 64 KiB, the rest on `flush()`.
    public init(sink: @escaping ([UInt8]) -> Void) {
        self.sink = sink
        buffer.reserveCapacity(1 << 16 + 4096)
    }

    /// Standard output, written as the buffer fills.
    public static func standardOutput() -> PlanTextOutput {
        PlanTextOutput { bytes in FileHandle.standardOutput.write(Data(bytes)) }
    }

    public func line(_ text: String) {
        buffer.append(contentsOf: text.utf8)
        endLine()
    }

    // Pieces of a line, for the per-tensor lines a large plan prints 100,000 of: appended as
    // bytes, without building a `String` per line.

    public func write(_ text: String) { buffer.append(contentsOf: text.utf8) }

    public func write<T: BinaryInteger>(_ number: T) {
        Self.appendDecimal(Int64(number), to: &buffer)
    }

    /// `[2, 3]`, as `formatShape` writes it. Formatted into one small array and appended once:
    /// each access to the buffer of this class is checked for exclusivity.
    public func write(shape: some Collection<Int>) {
        var text: [UInt8] = []
        text.reserveCapacity(48)
        text.append(UInt8(ascii: "["))
        var first = true
        for dim in shape {
            if !first {
                text.append(UInt8(ascii: ","))
                text.append(UInt8(ascii: " "))
            }
            first = false
            Self.appendDecimal(Int64(dim), to: &text)
        }
        text.append(UInt8(ascii: "]"))
        buffer.append(contentsOf: text)
    }

    private static func appendDecimal(_ number: Int64, to bytes: inout [UInt8]) {
        // Magnitude as UInt64: Int64.min has none as Int64.
        var value = number.magnitude
        if number < 0 { bytes.append(UInt8(ascii: "-")) }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        withUnsafeMutableBytes(of: &digits) { scratch in
            var index = scratch.count
            repeat {
                index -= 1
                scratch[index] = UInt8(ascii: "0") + UInt8(value % 10)
                value /= 10
            } while value > 0
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: scratch[index...]))
        }
    }

    /// Text made elsewhere (a batch of lines formatted on another core), as it is.
    public func write(bytes: [UInt8]) {
        buffer.append(contentsOf: bytes)
        if buffer.count >= 1 << 16 { flush() }
    }

    /// The bytes `write` produces.
    public static func bytes(_ write: (PlanTextOutput) throws -> Void) rethrows -> [UInt8] {
        var bytes: [UInt8] = []
        let output = PlanTextOutput { bytes.append(contentsOf: $0) }
        try write(output)
        output.flush()
        return bytes
    }

    public func endLine() {
        buffer.append(0x0A)
        if buffer.count >= 1 << 16 { flush() }
    }

    public func flush() {
        guard !buffer.isEmpty else { return }
        sink(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    /// The text `write` produces, as one string without the final newline.
    public static func collect(_ write: (PlanTextOutput) throws -> Void) rethrows -> String {
        var bytes: [UInt8] = []
        let output = PlanTextOutput { bytes.append(contentsOf: $0) }
        try write(output)
        output.flush()
        if bytes.last == 0x0A { bytes.removeLast() }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension ConversionPlan {
    /// Every group and move of the plan, one line each: what golden tests compare, so a change of
    /// any byte range shows. `group(g)` names group `g`'s destination, `source(i)` source `i`.
    public func writeMoves(to out: PlanTextOutput, group: (Int) -> String, source: (Int) -> String) {
        for index in 0..<groupCount {
            out.line("\(group(index)) \(byteCount(group: index)) bytes" + (isInterleaved(group: index) ? ", its moves interleaved row by row" : ""))
            for move in moves(group: index) {
                if move.isZeros {
                    out.line("    zeros \(move.byteCount)")
                } else if move.isContiguous {
                    out.line("    copy \(source(Int(move.source)))@\(move.offset) \(move.byteCount)")
                } else {
                    out.line("    strided \(source(Int(move.source)))@\(move.offset) \(move.rows) x \(move.segmentBytes) every \(move.stride)")
                }
            }
        }
    }

    /// Totals of the plan: groups, moves by kind, bytes, sources.
    public var summary: String {
        var copies = 0, strided = 0, zeros = 0
        var zeroBytes: Int64 = 0
        for move in moves {
            if move.isZeros {
                zeros += 1
                zeroBytes += move.byteCount
            } else if move.isContiguous {
                copies += 1
            } else {
                strided += 1
            }
        }
        return "plan: \(groupCount) groups, \(moves.count) moves (\(copies) copies, \(strided) strided, \(zeros) zero fills of \(zeroBytes) bytes) from \(sources.count) files, \(totalBytes) bytes"
    }
}

/// A pickled value as the dry run shows it (Python's repr for the common cases).
func renderPickle(_ value: PickleValue) -> String {
    switch value {
    case .none: "None"
    case .bool(let flag): flag ? "True" : "False"
    case .int(let int): String(int)
    case .float(let double): String(double)
    case .string(let text): "'\(text)'"
    case .global(let module, let name): "\(module).\(name)"
    case .list(let items): "[" + items.map(renderPickle).joined(separator: ", ") + "]"
    default: "\(value)"
    }
}
