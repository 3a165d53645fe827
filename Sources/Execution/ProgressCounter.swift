import Synchronization

/// Bytes done out of a known total, shared by workers and read by whoever displays progress; and
/// the run's notes for the user (what was cleaned up or dropped), shown by the same display.
public final class ProgressCounter: Sendable {
    public let total: Int64
    private let done = Atomic<Int64>(0)
    private let noteList = Mutex<[String]>([])

    public init(total: Int64) { self.total = total }

    public func add(_ bytes: Int64) {
        let now = done.wrappingAdd(bytes, ordering: .relaxed).newValue
        if let point = TestKillPoint.afterBytes, now >= point { TestKillPoint.reached() }
    }

    public var completed: Int64 { done.load(ordering: .relaxed) }

    private let skippedBytes = Atomic<Int64>(0)

    /// Bytes of the total this run does not write (files kept from an interrupted run, other
    /// ranks' shares of a job): progress and rates are of the rest.
    public func skip(_ bytes: Int64) { skippedBytes.wrappingAdd(bytes, ordering: .relaxed) }
    public var skipped: Int64 { skippedBytes.load(ordering: .relaxed) }

    private let statusText = Mutex<String?>(nil)
    /// A word on the whole, shown after this process's own progress (rank 0: the job's files).
    public var status: String? {
        get { statusText.withLock { $0 } }
        set { statusText.withLock { $0 = newValue } }
    }

    public func note(_ text: String) { noteList.withLock { $0.append(text) } }

    /// The notes so far, in order.
    public var notes: [String] { noteList.withLock { $0 } }
}
