import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// For tests of interrupted runs only: a point at which the process kills itself with SIGKILL
/// (what `kill -9` does, so nothing is cleaned up), chosen in the environment. A signal sent from
/// outside lands wherever the run happens to be; this lands exactly where a test asks, so a seeded
/// list of points is reproducible. Inert unless one of the variables is set.
///
/// - `NEMBRIDGE_TEST_KILL_AFTER_BYTES=N`: once the run's progress passes N bytes.
/// - `NEMBRIDGE_TEST_KILL_AFTER_RECORDS=N`: once N staged files are recorded complete.
public enum TestKillPoint {
    static let afterBytes: Int64? = ProcessInfo.processInfo.environment["NEMBRIDGE_TEST_KILL_AFTER_BYTES"].flatMap { Int64($0) }
    static let afterRecords: Int? = ProcessInfo.processInfo.environment["NEMBRIDGE_TEST_KILL_AFTER_RECORDS"].flatMap { Int($0) }

    static func reached() -> Never {
        kill(getpid(), SIGKILL)
        fatalError("SIGKILL did not stop the process")
    }
}
