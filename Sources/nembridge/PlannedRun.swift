import ArgumentParser
import Execution
import Foundation
import NembridgeKit

/// The options every writing command shares, and what it does once its plan is made: print it on
/// `--dry-run`, or run it with a progress line on a terminal.
struct PlannedRunOptions: ParsableArguments {
    @Flag(help: "Print the plan and write nothing.")
    var dryRun = false

    @Option(help: "Parallel I/O workers (also the number of .distcp files when writing a Megatron checkpoint).")
    var workers = 2

    @Flag(help: """
        Continue a run that was interrupted (killed) on the same --out with the same source and options: keep the output         files it completed, if each still matches its completion record, and write the rest. Without it, an interrupted         run's staging folder is removed.
        """)
    var resume = false

    @Option(help: "This process's rank in a job of --world-size processes that share one conversion (default: from srun, torchrun or mpirun's environment; alone without one).")
    var rank: Int?

    @Option(help: "The number of processes sharing the conversion (each writes a byte-balanced share of the output files; rank 0 publishes).")
    var worldSize: Int?

    @Option(help: "The job's id, the same in every process of it (default: SLURM_JOB_ID, TORCHELASTIC_RUN_ID, or the launcher's).")
    var jobID: String?

    @Option(help: "Seconds without a sign of life from another process of the job before this one stops with an error naming it. (default: 60)")
    var partTimeout: Double?

    /// How long the run took; nil for a dry run, or for a process of a job other than rank 0
    /// (which reports its share and ends once rank 0 has published).
    func run(
        phase: String, planText: (PlanTextOutput) -> Void, totalBytes: Int64, run: (MoveExecutor, ProgressCounter, JobPlacement) throws -> Void
    ) throws -> TimeInterval? {
        if dryRun {
            // Streamed: the plan of a 450,000-chunk checkpoint is never held as one string.
            let output = PlanTextOutput.standardOutput()
            planText(output)
            output.flush()
            return nil
        }
        let job = try JobPlacement.resolve(rank: rank, worldSize: worldSize, jobID: jobID, partTimeout: partTimeout)
        let counter = ProgressCounter(total: totalBytes)
        let display = ProgressDisplay(phase: job.isAlone ? phase : "\(phase), rank \(job.rank) of \(job.worldSize)", counter: counter)
        let start = Date()
        defer {
            // What the run cleaned up or dropped (an interrupted run's staging folder...), also on failure.
            for note in counter.notes { writeStandardError("nembridge: note: \(note)\n") }
        }
        do {
            try run(MoveExecutor(workers: max(1, workers), mode: .buffered), counter, job)
        } catch let part as JobPartWritten {
            display.finish()
            print("\(part) in \(formatRate(part.bytes, Date().timeIntervalSince(start)))")
            return nil
        }
        display.finish()
        return Date().timeIntervalSince(start)
    }
}

/// `1.23 s (2.01 GB/s)` for `bytes` moved in `seconds`.
func formatRate(_ bytes: Int64, _ seconds: TimeInterval) -> String {
    String(format: "%.2f s (%.2f GB/s)", seconds, Double(bytes) / 1e9 / max(seconds, 1e-9))
}
