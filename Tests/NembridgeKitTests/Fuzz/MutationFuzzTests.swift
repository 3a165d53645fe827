import Foundation
import NembridgeTestSupport
import Testing

/// The mutation fuzzer as part of `swift test`: a bounded run of every target (a few seconds
/// each), and the regression corpus replayed. `tools/fuzz.sh` (`make fuzz`) runs it longer.
@Suite(.serialized)
struct MutationFuzzTests {
    @Test("mutants of every input kind end in a value or a typed one-line error, in time", arguments: FuzzTargets.names)
    func fuzz(_ name: String) throws {
        // `tools/fuzz.sh` runs one target per process, so that a trap names its target.
        if let only = MutationFuzzer.environment["NEMBRIDGE_FUZZ_TARGETS"], !only.split(separator: ",").contains(Substring(name)) { return }
        let target = FuzzTargets.named(name)
        let iterations = MutationFuzzer.iterationsOverride ?? target.defaultIterations
        let longRun = MutationFuzzer.iterationsOverride != nil
        let budget = longRun ? (MutationFuzzer.environment["NEMBRIDGE_FUZZ_SECONDS"].flatMap { Double($0) } ?? .infinity) : MutationFuzzer.seconds
        let summary = try MutationFuzzer.fuzz(target, iterations: iterations, seconds: budget, seed: MutationFuzzer.baseSeed)
        print("fuzz \(summary)")
        for problem in summary.problems { Issue.record("\(name): \(problem)") }
        if !longRun {
            #expect(summary.iterations == iterations, "\(name): the \(budget) s CPU budget ran out after \(summary.iterations) of \(iterations) mutants")
        }
        #expect(summary.accepted + summary.rejected > 0)
    }

    @Test("the regression corpus replays: every file ends in a value or a typed one-line error", arguments: FuzzTargets.names)
    func corpus(_ name: String) throws {
        let target = FuzzTargets.named(name)
        let directory = MutationFuzzer.corpusDirectory(name)
        let files = ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { !$0.hasPrefix(".") }.sorted()
        let scratch = try TestCheckpoints.scratchDirectory("corpus-\(name)")
        defer { try? FileManager.default.removeItem(atPath: scratch) }
        for file in files {
            // `<context>--<what it found>.bin`; the context names the fixture it runs in.
            let stem = (file as NSString).deletingPathExtension
            let context = stem.components(separatedBy: "--").count > 1 ? stem.components(separatedBy: "--")[0].replacingOccurrences(of: "+", with: "/") : ""
            let input = MutationFuzzer.Input(context: context, bytes: try TestCheckpoints.readFile((directory as NSString).appendingPathComponent(file)))
            let (verdict, _) = MutationFuzzer.runOne(target, input, scratch: scratch, recordCurrent: false)
            if let verdict { Issue.record("\(name)/\(file): \(verdict)") }
        }
    }
}
