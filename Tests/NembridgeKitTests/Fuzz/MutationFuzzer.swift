import Execution
import Foundation
import MegatronCheckpoint
import NembridgeKit
import NembridgeTestSupport
import SafetensorsFormat
import TensorCore
import Testing
import TorchPickle
import TorchZip
import WeightMapping

#if canImport(Glibc)
import Glibc
#endif

/// A deterministic mutation fuzzer over nembridge's readers and planners, seeded from the
/// committed `TestCheckpoints/`. Each mutant is fed in-process to the real code and must return
/// normally or throw one of the typed errors of the modules, whose description is one line; a
/// trap ends the test process, and so fails the run. Each mutant gets a time bound, each target a
/// budget; allocation is bounded by the readers themselves (`readBytes` refuses ranges past the
/// end of the file before allocating, the pickle reader has `PickleLimits`).
///
/// Before each mutant runs it is written to `<crash dir>/<target>.current.bin` (its context to
/// `.context`), so a trap leaves the input that caused it behind: `tools/fuzz.sh` files it in
/// `Tests/FuzzCorpus/<target>/`, which `MutationFuzzTests.corpus` replays on every run.
///
/// Environment: `NEMBRIDGE_FUZZ_ITERATIONS` (per target; longer runs), `NEMBRIDGE_FUZZ_SECONDS`
/// (budget per target), `NEMBRIDGE_FUZZ_SEED`, `NEMBRIDGE_FUZZ_CRASH_DIR`.
enum MutationFuzzer {
    /// SplitMix64 (NembridgeTestSupport's) with the draws the mutators use.
    struct Random: RandomNumberGenerator {
        var generator: SplitMix64
        init(state: UInt64) { generator = SplitMix64(seed: state) }
        mutating func next() -> UInt64 { generator.next() }

        mutating func below(_ bound: Int) -> Int { bound <= 1 ? 0 : Int.random(in: 0..<bound, using: &self) }
        mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
        mutating func pick<T>(_ items: [T]) -> T { items[below(items.count)] }
    }

    /// One input and the context it runs in (a fixture name; empty when it needs none).
    struct Input: Sendable {
        var context: String
        var bytes: [UInt8]
    }

    static let environment = ProcessInfo.processInfo.environment
    static var iterationsOverride: Int? { environment["NEMBRIDGE_FUZZ_ITERATIONS"].flatMap { Int($0) } }
    static var seconds: Double { environment["NEMBRIDGE_FUZZ_SECONDS"].flatMap { Double($0) } ?? 20 }
    static var baseSeed: UInt64 { environment["NEMBRIDGE_FUZZ_SEED"].flatMap { UInt64($0) } ?? 0x6E62_6675_7A7A_0013 }
    /// No single mutant may take longer than this (the slowest, planning a config, takes tens of
    /// ms in a debug build).
    static let perMutantSeconds = 2.0

    /// CPU time of the calling thread: budgets and bounds count the work done, not the waits of
    /// a machine shared with other tests and builds (each target runs on one thread).
    static func cpuSeconds() -> Double {
        var time = timespec()
        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &time)
        return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
    }

    static var crashDirectory: String {
        environment["NEMBRIDGE_FUZZ_CRASH_DIR"] ?? (NSTemporaryDirectory() as NSString).appendingPathComponent("nembridge-fuzz")
    }

    /// The repository's regression corpus for `target`.
    static func corpusDirectory(_ target: String) -> String {
        (TestCheckpoints.root as NSString).appendingPathComponent("Tests/FuzzCorpus/\(target)")
    }

    // MARK: Checking outcomes

    /// The error types of nembridge's modules: anything else escaping a reader is a bug.
    static func isTyped(_ error: any Error) -> Bool {
        error is SafetensorsError || error is HFFolderError || error is FileIOError || error is MegatronCheckpointError
            || error is ZipError || error is PickleError || error is MappingError || error is LegacyLayoutError
            || error is JSONParser.Failure || error is ChecksumManifest.Invalid || error is ExportError
    }

    /// What is wrong with how one probe ended, or nil.
    static func verdict(_ outcome: Result<Void, any Error>, seconds: Double) -> String? {
        guard case .failure(let error) = outcome else { return nil }
        guard isTyped(error) else { return "untyped error \(type(of: error)): \(error)" }
        let text = "\(error)"
        if text.isEmpty { return "empty error description (\(type(of: error)))" }
        if MessageText.needsEscaping(text) { return "error description is not one line: \(MessageText.quoted(text, limit: 400))" }
        if text.count > 16384 { return "error description of \(text.count) characters" }
        return nil
    }

    /// Runs one input, timed; the input is left in the crash directory while it runs. `failed`:
    /// the first probe (the reader proper) refused the input.
    static func runOne(_ target: any FuzzTarget, _ input: Input, scratch: String, recordCurrent: Bool) -> (verdict: String?, failed: Bool) {
        if recordCurrent {
            let base = (crashDirectory as NSString).appendingPathComponent(target.name)
            FileManager.default.createFile(atPath: base + ".current.bin", contents: Data(input.bytes))
            FileManager.default.createFile(atPath: base + ".current.context", contents: Data(input.context.utf8))
        }
        let start = cpuSeconds()
        let outcomes = target.run(input, scratch: scratch)
        let seconds = cpuSeconds() - start
        let verdicts = outcomes.compactMap { verdict($0, seconds: 0) } + (seconds > perMutantSeconds ? ["took \(seconds) s (bound \(perMutantSeconds) s)"] : [])
        var failed = false
        if case .failure = outcomes.first { failed = true }
        return (verdicts.isEmpty ? nil : verdicts.joined(separator: "; "), failed)
    }

    struct Summary: CustomStringConvertible {
        var target: String
        var iterations = 0
        var skipped = 0
        var accepted = 0
        var rejected = 0
        /// CPU time of the fuzzing thread (what the budget counts), and wall-clock time.
        var seconds = 0.0
        var wallSeconds = 0.0
        var problems: [String] = []
        var description: String {
            "\(target): \(iterations) mutants in \(String(format: "%.1f", seconds)) s CPU, \(String(format: "%.1f", wallSeconds)) s wall (\(accepted) read, \(rejected) refused, \(skipped) skipped)"
        }
    }

    /// Mutates the target's seeds `iterations` times (or until the budget is spent), feeding each
    /// mutant to the target. Problems are collected with the mutant saved beside the crash file.
    static func fuzz(_ target: any FuzzTarget, iterations: Int, seconds budget: Double, seed: UInt64) throws -> Summary {
        let scratch = try TestCheckpoints.scratchDirectory("fuzz-\(target.name)")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        try FileManager.default.createDirectory(atPath: crashDirectory, withIntermediateDirectories: true)
        let seeds = try target.seeds(scratch: scratch)
        precondition(!seeds.isEmpty, "no seeds for \(target.name)")
        let pool = seeds.map(\.bytes)
        var random = Random(state: seed &+ UInt64(truncatingIfNeeded: target.name.hashValueStable))
        var summary = Summary(target: target.name)
        let start = cpuSeconds()
        let wallStart = ContinuousClock.now
        func elapsed() -> Double { cpuSeconds() - start }
        // The seeds themselves first (the malformed corpora among them are refused, as they must).
        for seedInput in seeds {
            let (verdict, _) = runOne(target, seedInput, scratch: scratch, recordCurrent: true)
            if let verdict { summary.problems.append("seed (context \(seedInput.context)): \(verdict)") }
        }
        while summary.iterations < iterations, elapsed() < budget {
            let seedInput = random.pick(seeds)
            summary.iterations += 1
            guard let bytes = target.mutate(seedInput.bytes, &random, pool: pool) else {
                summary.skipped += 1
                continue
            }
            let input = Input(context: seedInput.context, bytes: bytes)
            let (verdict, failed) = runOne(target, input, scratch: scratch, recordCurrent: true)
            if failed { summary.rejected += 1 } else { summary.accepted += 1 }
            if let verdict {
                let saved = (crashDirectory as NSString).appendingPathComponent("\(target.name)-\(summary.iterations).bin")
                FileManager.default.createFile(atPath: saved, contents: Data(bytes))
                summary.problems.append("mutant \(summary.iterations) (context \(input.context), saved as \(saved)): \(verdict)")
                if summary.problems.count >= 10 { break }
            }
        }
        summary.seconds = elapsed()
        let wall = ContinuousClock.now - wallStart
        summary.wallSeconds = Double(wall.components.seconds) + Double(wall.components.attoseconds) / 1e18
        return summary
    }

    // MARK: Mutations

    /// Values at the edges of the integer types readers compute with.
    static let interestingIntegers: [Int64] = [
        0, 1, -1, 2, 7, 8, 63, 64, 255, 256, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x1_0000_0000,
        Int64.max, Int64.min, Int64.max - 1, Int64.max - 7, Int64.max / 2, Int64(1) << 62, Int64(1) << 40, Int64(Int32.min),
    ]

    /// Random edits of raw bytes, positions drawn from `regions` when given (where the structure
    /// is: headers, directories), else anywhere.
    static func mutateBytes(_ input: [UInt8], _ random: inout Random, pool: [[UInt8]], regions: [Range<Int>] = []) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + random.below(4)) {
            let position: Int
            if let region = regions.isEmpty ? nil : random.pick(regions), !region.isEmpty, region.upperBound <= bytes.count {
                position = region.lowerBound + random.below(region.count)
            } else {
                position = random.below(max(bytes.count, 1))
            }
            switch random.below(10) {
            case 0 where !bytes.isEmpty:
                bytes[min(position, bytes.count - 1)] = UInt8.random(in: 0...255, using: &random)
            case 1:
                bytes.insert(UInt8.random(in: 0...255, using: &random), at: min(position, bytes.count))
            case 2 where !bytes.isEmpty:
                let start = min(position, bytes.count - 1)
                bytes.removeSubrange(start..<min(bytes.count, start + 1 + random.below(16)))
            case 3 where !bytes.isEmpty:
                let start = min(position, bytes.count - 1)
                let end = min(bytes.count, start + 1 + random.below(64))
                bytes.insert(contentsOf: bytes[start..<end], at: random.below(bytes.count + 1))
            case 4 where random.chance(30):
                bytes = Array(bytes[..<min(position, bytes.count)])
            case 5, 6:
                // A little-endian field of 1, 2, 4 or 8 bytes set to an edge value.
                let width = random.pick([1, 2, 4, 8])
                guard bytes.count >= width else { continue }
                let start = min(position, bytes.count - width)
                let value = UInt64(bitPattern: random.pick(interestingIntegers))
                for index in 0..<width { bytes[start + index] = UInt8(truncatingIfNeeded: value >> (8 * index)) }
            case 7:
                let other = random.pick(pool)
                guard !other.isEmpty else { continue }
                let from = random.below(other.count)
                bytes.insert(contentsOf: other[from..<min(other.count, from + 1 + random.below(128))], at: min(position, bytes.count))
            case 8:
                bytes.insert(contentsOf: random.pick(hostileTexts), at: min(position, bytes.count))
            default:
                guard !bytes.isEmpty else { continue }
                let start = min(position, bytes.count - 1)
                bytes[start] ^= UInt8(1) << UInt8(random.below(8))
            }
        }
        return bytes
    }

    /// Text that must never reach a message unquoted.
    static let hostileTexts: [[UInt8]] = [
        Array("\n".utf8), Array("a\nb".utf8), Array("\u{1B}[2J".utf8), [0x00], [0xFF, 0xFE], [0xC3], Array("\r\n\t".utf8),
        Array("\u{202E}".utf8), Array(String(repeating: "x", count: 300).utf8),
    ]

    /// Pickle-aware edits: an integer argument replaced by an edge value (offsets, lengths,
    /// sizes are ints), a string made hostile, an opcode dropped or repeated; raw edits else.
    static func mutatePickle(_ input: [UInt8], _ random: inout Random, pool: [[UInt8]]) -> [UInt8] {
        guard let instructions = try? PickleReader.instructions(input), instructions.count > 2, random.chance(75) else {
            return mutateBytes(input, &random, pool: pool)
        }
        var bytes = input
        for _ in 0..<(1 + random.below(3)) {
            guard let listed = try? PickleReader.instructions(bytes), listed.count > 2 else { break }
            let ends = listed.indices.map { $0 + 1 < listed.count ? listed[$0 + 1].offset : bytes.count }
            let integers = listed.indices.filter { [.binInt, .binInt1, .binInt2, .long1, .int].contains(listed[$0].opcode) }
            let strings = listed.indices.filter { [.shortBinUnicode, .binUnicode, .shortBinString, .binString].contains(listed[$0].opcode) }
            switch random.below(6) {
            case let choice where choice < 3 && !integers.isEmpty:
                let index = random.pick(integers)
                let value = random.chance(80) ? random.pick(interestingIntegers) : Int64.random(in: -1000...1000, using: &random)
                bytes.replaceSubrange(listed[index].offset..<ends[index], with: long1(value))
            case 3 where !strings.isEmpty:
                let index = random.pick(strings)
                let text = random.pick(hostileTexts) + Array("name".utf8)
                bytes.replaceSubrange(listed[index].offset..<ends[index],
                                      with: [0x58] + withUnsafeBytes(of: UInt32(text.count).littleEndian, Array.init) + text)
            case 4:
                let index = 1 + random.below(listed.count - 2)
                bytes.removeSubrange(listed[index].offset..<ends[index])
            default:
                let index = 1 + random.below(listed.count - 2)
                bytes.insert(contentsOf: bytes[listed[index].offset..<ends[index]], at: listed[index].offset)
            }
        }
        return bytes
    }

    // MARK: JSON

    static let cappedNumbers = ["0", "1", "-1", "2", "3", "4", "7", "8", "16", "63", "64", "100", "128", "1000", "4096", "-4096",
                                "1.5", "0.0", "-0", "1e3", "2.5e-1"]
    static let hugeNumbers = ["18446744073709551615", "18446744073709551616", "9223372036854775807", "9223372036854775808",
                              "-9223372036854775808", "4294967296", "1e308", "1e309", "123456789012345678901234567890"]
    static let interestingStrings = ["", "LlamaForCausalLM", "NemotronHForCausalLM", "DeciLMForCausalLM", "MistralForCausalLM",
                                     "bfloat16", "float32", "BF16", "F8_E4M3", "U8", "M*-M*-", "llama3", "silu", "relu2"]

    /// Edits JSON text: one node replaced, removed, duplicated or renamed (the document parsed
    /// and written compactly), or the raw text edited when it does not parse. Integers stay
    /// within `capIntegers` when given.
    static func mutateJSONText(_ text: String, _ random: inout Random, capIntegers: Int?) -> String {
        guard let document = try? JSONParser.parse(text), random.chance(85) else {
            var bytes = Array(text.utf8)
            let position = random.below(bytes.count + 1)
            switch random.below(3) {
            case 0: bytes.insert(contentsOf: Array(random.pick(capIntegers == nil ? hugeNumbers : cappedNumbers).utf8), at: position)
            case 1 where !bytes.isEmpty: bytes.removeSubrange(min(position, bytes.count - 1)..<min(bytes.count, position + 1 + random.below(8)))
            default: bytes.insert(contentsOf: random.pick(hostileTexts), at: position)
            }
            return String(decoding: bytes, as: UTF8.self)
        }
        var mutated = document
        for _ in 0..<(1 + random.below(3)) { mutated = mutateJSON(mutated, &random, cap: capIntegers, depth: 0) }
        return JSONWriter.compact(mutated)
    }

    static func randomJSONScalar(_ random: inout Random, cap: Int?) -> JSONValue {
        switch random.below(6) {
        case 0: .null
        case 1: .bool(random.chance(50))
        case 2, 3: .number(JSONNumber(text: random.pick(cap == nil && random.chance(50) ? hugeNumbers : cappedNumbers)))
        case 4: .string(random.pick(interestingStrings))
        default: .string(String(decoding: random.pick(hostileTexts), as: UTF8.self))
        }
    }

    static func mutateJSON(_ value: JSONValue, _ random: inout Random, cap: Int?, depth: Int) -> JSONValue {
        let descend = depth < 8 && random.chance(60)
        switch value {
        case .object(var members) where !members.isEmpty:
            let index = random.below(members.count)
            if descend {
                members[index].value = mutateJSON(members[index].value, &random, cap: cap, depth: depth + 1)
                return .object(members)
            }
            switch random.below(5) {
            case 0: members.remove(at: index)
            case 1: members.insert(members[index], at: random.below(members.count + 1))
            case 2: members[index].key = random.chance(50) ? String(decoding: random.pick(hostileTexts), as: UTF8.self) : random.pick(interestingStrings)
            case 3: members[index].value = randomJSONScalar(&random, cap: cap)
            default: members[index].value = random.chance(50) ? .array([]) : .object([])
            }
            return .object(members)
        case .array(var items) where !items.isEmpty:
            let index = random.below(items.count)
            if descend {
                items[index] = mutateJSON(items[index], &random, cap: cap, depth: depth + 1)
                return .array(items)
            }
            switch random.below(4) {
            case 0: items.remove(at: index)
            case 1: items.insert(items[index], at: random.below(items.count + 1))
            case 2: items[index] = randomJSONScalar(&random, cap: cap)
            default: items = []
            }
            return .array(items)
        default:
            return randomJSONScalar(&random, cap: cap)
        }
    }

    /// Whether the JSON document in `bytes` (if it parses) holds a number outside `allowed` that
    /// `original` does not hold (a seed's own `rope_theta` of 500000 stays allowed).
    static func hasNumber(outside allowed: ClosedRange<Double>, _ bytes: [UInt8], comparedTo original: [UInt8]) -> Bool {
        func numbers(_ value: JSONValue) -> [JSONNumber] {
            switch value {
            case .number(let number): [number]
            case .array(let items): items.flatMap(numbers)
            case .object(let members): members.flatMap { numbers($0.value) }
            default: []
            }
        }
        guard let document = try? JSONParser.parse(bytes) else { return false }
        let known = Set((try? JSONParser.parse(original)).map(numbers)?.map(\.text) ?? [])
        return numbers(document).contains { !known.contains($0.text) && !allowed.contains($0.doubleValue ?? .infinity) }
    }

    /// `LONG1` with 8 bytes of two's complement.
    static func long1(_ value: Int64) -> [UInt8] {
        [0x8A, 8] + withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    /// Offsets of the ZIP records (`PK` signatures): where the fields a reader trusts are.
    static func zipRegions(_ bytes: [UInt8]) -> [Range<Int>] {
        var regions: [Range<Int>] = []
        var index = 0
        while index + 4 <= bytes.count {
            if bytes[index] == 0x50, bytes[index + 1] == 0x4B, [1, 3, 5, 6, 7].contains(bytes[index + 2]) {
                regions.append(index..<min(bytes.count, index + 56))
            }
            index += 1
        }
        return regions
    }
}

extension String {
    /// A hash that does not change between runs (Swift's `hashValue` is seeded per process).
    var hashValueStable: UInt64 {
        var hash: UInt64 = 0xCBF2_9CE4_8422_2325
        for byte in utf8 { hash = (hash ^ UInt64(byte)) &* 0x100_0000_01B3 }
        return hash
    }
}
