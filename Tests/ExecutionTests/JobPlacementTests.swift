import Execution
import Testing

struct JobPlacementTests {
    @Test("each launcher's environment gives the rank, size and job id")
    func launchers() throws {
        let srun = try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: nil, partTimeout: nil, environment: [
            "SLURM_STEP_ID": "3", "SLURM_PROCID": "2", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "4", "SLURM_JOB_ID": "991",
        ])
        #expect(srun == JobPlacement(rank: 2, worldSize: 4, jobID: "991.3", partTimeout: 60, launcher: "srun"))
        let torchrun = try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: nil, partTimeout: 5, environment: [
            "RANK": "1", "WORLD_SIZE": "2", "TORCHELASTIC_RUN_ID": "abc",
        ])
        #expect(torchrun == JobPlacement(rank: 1, worldSize: 2, jobID: "abc", partTimeout: 5, launcher: "torchrun"))
        let mpirun = try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: "x-1", partTimeout: nil, environment: [
            "OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "3",
        ])
        #expect(mpirun == JobPlacement(rank: 0, worldSize: 3, jobID: "x-1", partTimeout: 60, launcher: "mpirun"))
    }

    @Test("a batch script's own SLURM variables (no job step) and an empty environment mean alone")
    func alone() throws {
        let batch = try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: nil, partTimeout: nil, environment: [
            "SLURM_PROCID": "0", "SLURM_NTASKS": "16", "SLURM_JOB_ID": "5",
        ])
        #expect(batch.isAlone)
        #expect(try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: nil, partTimeout: nil, environment: [:]).isAlone)
    }

    @Test("flags win over the environment; bad values are refused")
    func flags() throws {
        let placed = try JobPlacement.resolve(rank: 1, worldSize: 2, jobID: "j", partTimeout: nil, environment: ["RANK": "0", "WORLD_SIZE": "9"])
        #expect(placed.rank == 1 && placed.worldSize == 2 && placed.launcher == "--rank")
        #expect(throws: JobPlacement.Failure.self) { try JobPlacement.resolve(rank: 1, worldSize: nil, jobID: nil, partTimeout: nil, environment: [:]) }
        #expect(throws: JobPlacement.Failure.self) { try JobPlacement.resolve(rank: 2, worldSize: 2, jobID: nil, partTimeout: nil, environment: [:]) }
        #expect(throws: JobPlacement.Failure.self) { try JobPlacement.resolve(rank: 0, worldSize: 0, jobID: nil, partTimeout: nil, environment: [:]) }
        #expect(throws: JobPlacement.Failure.self) {
            try JobPlacement.resolve(rank: nil, worldSize: nil, jobID: nil, partTimeout: nil, environment: ["RANK": "one", "WORLD_SIZE": "2"])
        }
        #expect(throws: JobPlacement.Failure.self) { try JobPlacement.resolve(rank: 0, worldSize: 2, jobID: "a/b", partTimeout: nil, environment: [:]) }
        #expect(throws: JobPlacement.Failure.self) { try JobPlacement.resolve(rank: 0, worldSize: 2, jobID: nil, partTimeout: -1, environment: [:]) }
    }

    @Test("shares: every file to one rank, largest first to the least loaded, the same on every call")
    func shares() {
        let bytes: [Int64] = [10, 70, 30, 30, 50, 0]
        let owners = JobPlacement.shares(bytes: bytes, worldSize: 3)
        // by hand: 70 -> r0; 50 -> r1; 30 -> r2; 30 -> r2 (loads 70, 50, 30); 10 -> r1 (70, 50, 60); 0 -> r1 (70, 60, 60: lower rank)
        #expect(owners == [1, 0, 2, 2, 1, 1])
        var load = [Int64](repeating: 0, count: 3)
        for (file, rank) in owners.enumerated() { load[rank] += bytes[file] }
        #expect(load.max()! - load.min()! <= bytes.max()!)
        #expect(JobPlacement.shares(bytes: bytes, worldSize: 1) == [0, 0, 0, 0, 0, 0])
        #expect(JobPlacement.shares(bytes: [5], worldSize: 4) == [0])
    }
}
