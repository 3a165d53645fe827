import Foundation
import NembridgeTestSupport
import TensorCore

@testable import TorchZip

/// A byte sink collecting writes in memory, for writer tests.
final class MemorySink: ByteSink, @unchecked Sendable {
    private let lock = NSLock()
    private var storage: [UInt8] = []

    func write(_ bytes: UnsafeRawBufferPointer, at offset: Int64) throws {
        lock.lock()
        defer { lock.unlock() }
        let end = Int(offset) + bytes.count
        if storage.count < end { storage.append(contentsOf: repeatElement(0, count: end - storage.count)) }
        storage.replaceSubrange(Int(offset)..<end, with: bytes)
    }

    func write(_ bytes: [UInt8], at offset: Int64) throws {
        try bytes.withUnsafeBytes { try write($0, at: offset) }
    }

    func copy(from source: ReadOnlyFile, range: ByteRange, to offset: Int64) throws -> Bool { false }

    var bytes: [UInt8] {
        lock.lock()
        defer { lock.unlock() }
        return storage
    }
}


enum Scratch {
    /// Writes `bytes` to a new file in a scratch directory and returns its path.
    static func file(_ bytes: [UInt8], name: String = "archive.zip", label: String = "zip") throws -> String {
        let directory = try TestCheckpoints.scratchDirectory(label)
        let path = (directory as NSString).appendingPathComponent(name)
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    /// Opens `bytes` as a whole-file archive.
    static func archive(_ bytes: [UInt8]) throws -> ZipArchive {
        try ZipArchive(path: try file(bytes))
    }
}
