import Foundation
import Dispatch
import Synchronization
import TensorCore
import Testing

#if canImport(Glibc)
import Glibc
#endif

struct FileTests {
    func scratchFile(_ bytes: [UInt8]) throws -> String {
        let path = NSTemporaryDirectory() + "nembridge-file-\(UUID().uuidString)"
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test("positional reads of any range; reads past the end fail with the offset")
    func positionalReads() throws {
        let path = try scratchFile(Array(0..<200).map { UInt8($0) })
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try ReadOnlyFile(path: path)
        #expect(file.size == 200)
        #expect(try file.readBytes(ByteRange(offset: 190, count: 10)) == Array(190..<200).map { UInt8($0) })
        #expect(throws: FileIOError(path: path, operation: .read, offset: 200, errno: nil)) {
            _ = try file.readBytes(ByteRange(offset: 195, count: 10))
        }
        let mapped = try file.map(ByteRange(offset: 5000 % 200, count: 7))
        #expect(Array(mapped.bytes) == Array(0..<7).map { UInt8($0) })
        let unaligned = try file.map(ByteRange(offset: 123, count: 3))
        #expect(Array(unaligned.bytes) == [123, 124, 125])
    }

    @Test("opening a missing file names it")
    func missing() {
        let error = #expect(throws: FileIOError.self) { try ReadOnlyFile(path: "/nonexistent/nembridge") }
        #expect(error?.path == "/nonexistent/nembridge")
        #expect(error?.description.hasPrefix("/nonexistent/nembridge: open failed") == true)
    }

    @Test("a directory, a device or a socket where a file is expected is refused by type")
    func notRegularFiles() throws {
        let directory = NSTemporaryDirectory() + "nembridge-types-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: directory) }
        #expect(throws: FileIOError.notARegularFile(path: directory, kind: .directory)) { try ReadOnlyFile(path: directory) }
        #expect(throws: FileIOError.notARegularFile(path: "/dev/null", kind: .characterDevice)) { try ReadOnlyFile(path: "/dev/null") }
        #expect(throws: FileIOError.notARegularFile(path: directory, kind: .directory)) { _ = try ReadOnlyFile.contents(atPath: directory) }
        let error = FileIOError.notARegularFile(path: directory, kind: .directory)
        #expect(error.description == "\(directory): not a regular file (it is a directory)")
        #expect(error.operation == .open && error.path == directory)

        let socketPath = directory + "/s"
        let socket = Glibc.socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        #expect(socket >= 0)
        defer { close(socket) }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (index, byte) in socketPath.utf8.enumerated() { raw[index] = byte }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(socket, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        #expect(bound == 0)
        #expect(throws: FileIOError.self) { try ReadOnlyFile(path: socketPath) }

        // Symlinks to regular files stay allowed (hub-cache snapshots are symlinks into blobs/).
        let target = try scratchFile([1, 2, 3])
        defer { try? FileManager.default.removeItem(atPath: target) }
        try FileManager.default.createSymbolicLink(atPath: directory + "/link", withDestinationPath: target)
        #expect(try ReadOnlyFile.contents(atPath: directory + "/link") == [1, 2, 3])
        try FileManager.default.createSymbolicLink(atPath: directory + "/dirlink", withDestinationPath: directory)
        #expect(throws: FileIOError.notARegularFile(path: directory + "/dirlink", kind: .directory)) {
            try ReadOnlyFile(path: directory + "/dirlink")
        }
    }

    @Test("a FIFO is refused at once, without waiting for a writer")
    func fifo() throws {
        let path = NSTemporaryDirectory() + "nembridge-fifo-\(UUID().uuidString)"
        #expect(mkfifo(path, 0o600) == 0)
        defer { unlink(path) }
        // If the open blocked, this writer would release it after 10 s, and the test would fail
        // on the time instead of hanging.
        let watchdog = Thread {
            Thread.sleep(forTimeInterval: 10)
            let writer = open(path, O_WRONLY | O_NONBLOCK)
            if writer >= 0 { close(writer) }
        }
        watchdog.start()
        let start = Date()
        #expect(throws: FileIOError.notARegularFile(path: path, kind: .fifo)) { try ReadOnlyFile(path: path) }
        #expect(Date().timeIntervalSince(start) < 5)
    }

    @Test("a read of a range past the end of the file fails before allocating it")
    func hugeRange() throws {
        let path = try scratchFile(Array(0..<16).map { UInt8($0) })
        defer { try? FileManager.default.removeItem(atPath: path) }
        let file = try ReadOnlyFile(path: path)
        #expect(throws: FileIOError(path: path, operation: .read, offset: 16, errno: nil)) {
            _ = try file.readBytes(ByteRange(offset: 0, count: Int64.max - 1))
        }
        #expect(throws: FileIOError(path: path, operation: .read, offset: Int64.max / 2, errno: nil)) {
            _ = try file.readBytes(ByteRange(offset: Int64.max / 2, count: 8))
        }
        #expect(throws: FileIOError.tooLarge(path: path, size: 16, limit: 8)) { _ = try ReadOnlyFile.contents(atPath: path, limit: 8) }
        #expect(ByteRange(validatingOffset: Int64.max, count: 1) == nil)
        #expect(ByteRange(validatingOffset: -1, count: 1) == nil)
        #expect(ByteRange(validatingOffset: 4, count: 4) == ByteRange(offset: 4, count: 4))
    }

    func scratchDirectory() throws -> String {
        let directory = NSTemporaryDirectory() + "nembridge-atomic-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        return directory
    }

    @Test("atomic output: invisible until published, gone when discarded")
    func atomicOutput() throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let target = directory + "/out.bin"
        let output = try AtomicOutputFile(path: target)
        try output.write([4, 5, 6], at: 3)
        try output.write([1, 2, 3], at: 0)
        #expect(!FileManager.default.fileExists(atPath: target))
        try output.publish()
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data([1, 2, 3, 4, 5, 6]))
        let abandoned = try AtomicOutputFile(path: directory + "/other.bin")
        try abandoned.write([9], at: 0)
        abandoned.discard()
        #expect(try FileManager.default.contentsOfDirectory(atPath: directory) == ["out.bin"])
    }

    @Test("a write larger than one pwrite piece lands whole, from two threads into one file")
    func largeWritesInPieces() throws {
        let directory = try scratchDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let target = directory + "/out.bin"
        // 2.5 pieces a half, each half a pattern that repeats every 251 bytes: a lost, doubled or
        // misplaced piece shows.
        let half = 5 * (1 << 19) / 2 + 7
        let low = (0..<half).map { UInt8(truncatingIfNeeded: $0 % 251) }
        let high = (0..<half).map { UInt8(truncatingIfNeeded: ($0 % 251) + 3) }
        let output = try AtomicOutputFile(path: target)
        let failures = Mutex<[String]>([])
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            do { try output.write(index == 0 ? low : high, at: index == 0 ? 0 : Int64(half)) } catch {
                failures.withLock { $0.append("\(error)") }
            }
        }
        #expect(failures.withLock { $0 }.isEmpty)
        try output.publish()
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(low + high))
    }

    @Test("kernel copy between files")
    func kernelCopy() throws {
        let path = try scratchFile(Array(repeating: 7, count: 10) + Array(0..<50).map { UInt8($0) })
        defer { try? FileManager.default.removeItem(atPath: path) }
        let source = try ReadOnlyFile(path: path)
        let target = path + ".out"
        let output = try AtomicOutputFile(path: target)
        if try output.copy(from: source, range: ByteRange(offset: 10, count: 50), to: 0) == false {
            try output.write(try source.readBytes(ByteRange(offset: 10, count: 50)), at: 0)
        }
        try output.publish()
        defer { try? FileManager.default.removeItem(atPath: target) }
        #expect(try Data(contentsOf: URL(fileURLWithPath: target)) == Data(Array(0..<50).map { UInt8($0) }))
    }

    @Test("XXH3-64 matches the reference test vectors, streaming or not")
    func xxh3() {
        // Values from the xxHash reference (XXH3_64bits, seed 0).
        #expect(XXH3Hasher.hash(UnsafeRawBufferPointer(start: nil, count: 0)) == 0x2D06_8005_38D3_94C2)
        let bytes = Array("nembridge".utf8) + [UInt8](repeating: 0xAB, count: 5000)
        let oneShot = bytes.withUnsafeBytes { XXH3Hasher.hash($0) }
        let hasher = XXH3Hasher()
        hasher.update(Array(bytes[..<1000]))
        hasher.update(Array(bytes[1000...]))
        #expect(hasher.digest == oneShot)
        #expect(UInt64(0xAB).hexDigest == "00000000000000ab")
    }
}
