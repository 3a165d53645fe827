import Foundation
import TensorCore

/// A process's place in a job that spreads one conversion over several processes: its rank, the
/// number of processes, the job's id (which attempt this is), and how long a silent process is
/// waited for. Read from the launcher the cluster already runs (srun, torchrun, mpirun) or given
/// as flags; with none of them the process runs alone.
///
/// Every process of a job computes the same plan and writes a disjoint, byte-balanced share of
/// the output files into the shared staging folder (see `JobShare`); rank 0 publishes.
public struct JobPlacement: Sendable, Equatable, CustomStringConvertible {
    public var rank: Int
    public var worldSize: Int
    public var jobID: String
    /// Seconds without a sign of life (a heartbeat) after which a process of the job is taken
    /// as dead, and the others stop with an error naming it.
    public var partTimeout: Double
    /// Where rank and size came from, for messages (`srun`, `torchrun`, `mpirun`, `--rank`).
    public var launcher: String

    public static let alone = JobPlacement(rank: 0, worldSize: 1, jobID: "local", partTimeout: 60, launcher: "alone")

    public init(rank: Int, worldSize: Int, jobID: String, partTimeout: Double = 60, launcher: String) {
        self.rank = rank
        self.worldSize = worldSize
        self.jobID = jobID
        self.partTimeout = partTimeout
        self.launcher = launcher
    }

    public var isAlone: Bool { worldSize == 1 }
    public var publishes: Bool { rank == 0 }
    public var description: String { "rank \(rank) of \(worldSize) (\(launcher), job \(jobID))" }

    public enum Failure: Error, Equatable, CustomStringConvertible {
        case invalid(source: String, reason: String)

        public var description: String {
            switch self {
            case .invalid(let source, let reason): "\(source): \(reason)"
            }
        }
    }

    /// The placement from flags (`rank`, `worldSize`, `jobID`; all or none of the first two),
    /// else from the launcher's environment: srun (`SLURM_PROCID`/`SLURM_NTASKS`, only inside a
    /// job step, where `SLURM_STEP_ID` is set: a batch script's own environment describes the
    /// allocation, not this process), torchrun (`RANK`/`WORLD_SIZE`), mpirun
    /// (`OMPI_COMM_WORLD_RANK`/`OMPI_COMM_WORLD_SIZE`). The job id: the flag, `SLURM_JOB_ID`
    /// (with the step), `TORCHELASTIC_RUN_ID`, or the launcher's name.
    public static func resolve(rank: Int?, worldSize: Int?, jobID: String?, partTimeout: Double?,
                               environment: [String: String] = ProcessInfo.processInfo.environment) throws -> JobPlacement {
        let timeout = partTimeout ?? alone.partTimeout
        guard timeout > 0, timeout.isFinite else { throw Failure.invalid(source: "--part-timeout", reason: "must be a positive number of seconds") }
        func number(_ name: String, _ text: String) throws -> Int {
            guard let value = Int(text.trimmingCharacters(in: .whitespaces)) else {
                throw Failure.invalid(source: name, reason: "\(MessageText.quoted(text)) is not a whole number")
            }
            return value
        }
        var found: (rank: Int, size: Int, launcher: String, job: String?)?
        if rank != nil || worldSize != nil {
            guard let rank, let worldSize else { throw Failure.invalid(source: "--rank/--world-size", reason: "give both, or neither") }
            found = (rank, worldSize, "--rank", nil)
        } else if environment["SLURM_STEP_ID"] != nil || environment["SLURM_STEPID"] != nil,
                  let procID = environment["SLURM_PROCID"], let tasks = environment["SLURM_STEP_NUM_TASKS"] ?? environment["SLURM_NTASKS"] {
            let step = environment["SLURM_STEP_ID"] ?? environment["SLURM_STEPID"] ?? ""
            found = (try number("SLURM_PROCID", procID), try number("SLURM_NTASKS", tasks), "srun",
                     environment["SLURM_JOB_ID"].map { "\($0).\(step)" })
        } else if let rank = environment["RANK"], let size = environment["WORLD_SIZE"] {
            found = (try number("RANK", rank), try number("WORLD_SIZE", size), "torchrun", environment["TORCHELASTIC_RUN_ID"])
        } else if let rank = environment["OMPI_COMM_WORLD_RANK"], let size = environment["OMPI_COMM_WORLD_SIZE"] {
            found = (try number("OMPI_COMM_WORLD_RANK", rank), try number("OMPI_COMM_WORLD_SIZE", size), "mpirun",
                     environment["PMIX_NAMESPACE"] ?? environment["OMPI_MCA_ess_base_jobid"])
        }
        guard let found else {
            var placement = alone
            placement.partTimeout = timeout
            if let jobID { placement.jobID = jobID }
            return placement
        }
        guard found.size >= 1 else { throw Failure.invalid(source: found.launcher, reason: "world size \(found.size) is not positive") }
        guard (0..<found.size).contains(found.rank) else {
            throw Failure.invalid(source: found.launcher, reason: "rank \(found.rank) is outside 0..<\(found.size)")
        }
        let id = jobID ?? found.job ?? found.launcher
        guard !id.isEmpty, id.utf8.count <= 200, id.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-:".contains($0)) }) else {
            throw Failure.invalid(source: "job id", reason: "\(MessageText.quoted(id)) must be 1-200 letters, digits or . _ - :")
        }
        return JobPlacement(rank: found.rank, worldSize: found.size, jobID: id, partTimeout: timeout, launcher: found.launcher)
    }

    /// Which outputs each rank writes: the files by size, largest first, each to the rank with the
    /// fewest bytes so far (ties to the lower rank). Deterministic, so every rank computes the
    /// same split from the same plan; the bytes of every file do not depend on who writes it.
    public static func shares(bytes: [Int64], worldSize: Int) -> [Int] {
        var load = [Int64](repeating: 0, count: worldSize)
        var owner = [Int](repeating: 0, count: bytes.count)
        for file in bytes.indices.sorted(by: { bytes[$0] != bytes[$1] ? bytes[$0] > bytes[$1] : $0 < $1 }) {
            let rank = load.indices.min { load[$0] != load[$1] ? load[$0] < load[$1] : $0 < $1 }!
            owner[file] = rank
            load[rank] += bytes[file]
        }
        return owner
    }
}
