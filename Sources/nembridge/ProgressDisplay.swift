import Execution
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A one-line progress display on stderr (phase, bytes, GB/s, ETA), shown only when stderr is a
/// terminal, so logs and pipes stay quiet.
final class ProgressDisplay: @unchecked Sendable {
    private let counter: ProgressCounter
    private let phase: String
    private let start = Date()
    private var timer: DispatchSourceTimer?

    init(phase: String, counter: ProgressCounter) {
        self.phase = phase
        self.counter = counter
        guard isatty(STDERR_FILENO) == 1 else { return }
        let timer = DispatchSource.makeTimerSource(queue: DispatchQueue(label: "nembridge.progress"))
        timer.schedule(deadline: .now() + 0.5, repeating: 0.5)
        timer.setEventHandler { [weak self] in self?.draw(final: false) }
        timer.resume()
        self.timer = timer
    }

    func finish() {
        guard let timer else { return }
        timer.cancel()
        self.timer = nil
        draw(final: true)
    }

    private func draw(final: Bool) {
        // Of the bytes this process writes (its share of a job, what a resume redoes).
        let done = counter.completed
        let total = counter.total - counter.skipped
        let elapsed = max(Date().timeIntervalSince(start), 0.001)
        let rate = Double(done) / elapsed
        let remaining = rate > 0 ? Double(total - done) / rate : 0
        let percent = total > 0 ? 100 * Double(done) / Double(total) : 100
        let line = String(format: "%.1f%%  %.2f / %.2f GB  %.2f GB/s  ETA %.0fs",
                          percent, Double(done) / 1e9, Double(total) / 1e9, rate / 1e9, remaining)
        let status = counter.status.map { "  (\($0))" } ?? ""
        FileHandle.standardError.write(Data("\r\u{1B}[K\(phase): \(line)\(status)\(final ? "\n" : "")".utf8))
    }
}
