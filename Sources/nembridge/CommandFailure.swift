import ArgumentParser
import Foundation
import TensorCore

/// Runs a command body; any error is printed once, plainly, on stderr, with exit status 1.
/// (ArgumentParser would print Foundation's generic text for errors that are not its own.)
func reportingFailures(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch let exit as ExitCode {
        throw exit
    } catch {
        // Every error quotes the input text it carries; escaping again (a no-op on quoted text)
        // keeps the promise of one line per error for any message that missed it.
        FileHandle.standardError.write(Data("nembridge: error: \(MessageText.quoted(String(describing: error), limit: nil))\n".utf8))
        throw ExitCode.failure
    }
}

func writeStandardOutput(_ text: String) {
    FileHandle.standardOutput.write(Data((text.hasSuffix("\n") ? text : text + "\n").utf8))
}

func writeStandardError(_ text: String) {
    FileHandle.standardError.write(Data(text.utf8))
}
