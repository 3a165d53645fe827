import CZstd
import Foundation
import TensorCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Decodes DCP items stored with `transform_descriptors == ["stream.zstd/1"]` (torch's
/// `torch.distributed.checkpoint._extension.ZStandard`): one or more zstd frames whose decoded
/// content is the item (a `torch.save` zip). Decoding streams through fixed buffers
/// (`ZSTD_DStreamInSize` / `ZSTD_DStreamOutSize`, about 128 KiB each) into an unlinked temporary
/// file, so an item of any size costs no more memory than that.
enum ZstdStreamDecoder {
    /// The transform descriptor torch writes for zstd items.
    static let descriptor = "stream.zstd/1"

    /// libzstd's own default: no frame may ask for a window over 128 MiB, which bounds the
    /// decoder's memory whatever the frame header says.
    static let windowLogMax: Int32 = 27

    /// The most an item may decode to, and what holds it (for the error).
    struct Limit {
        var bytes: Int64
        var holder: String
    }

    /// Decodes `range` of `file` into a new unlinked temporary file (in `TMPDIR`) and returns it
    /// opened for reading. `key` and the item's offset name the item in errors.
    static func decodeToTemporaryFile(file: ReadOnlyFile, range: ByteRange, key: String, limit: Limit) throws -> ReadOnlyFile {
        let output = try TemporaryFile { reason in
            .decompressionFailed(file: file.path, key: key, offset: range.offset, reason: reason)
        }
        defer { output.closeDescriptor() }
        try decode(file: file, range: range, key: key, limit: limit) { piece in try output.append(piece) }
        return try output.reopenReadOnlyAndUnlink()
    }

    /// Decodes `range` of `file`, handing the decoded bytes to `sink` piece by piece. A frame
    /// that declares more than `limit` bytes is refused before anything is decoded; a stream
    /// that decodes to more is refused before the piece that would pass the limit reaches `sink`.
    static func decode(
        file: ReadOnlyFile, range: ByteRange, key: String, limit: Limit, sink: (UnsafeRawBufferPointer) throws -> Void
    ) throws {
        func fail(_ reason: String) -> MegatronCheckpointError {
            .decompressionFailed(file: file.path, key: key, offset: range.offset, reason: reason)
        }
        guard range.end <= file.size else {
            throw fail("the item's \(range.count) bytes end at \(range.end), past the end of the file (\(file.size) bytes)")
        }
        guard let stream = ZSTD_createDCtx() else { throw fail("cannot create a decompression context") }
        defer { ZSTD_freeDCtx(stream) }
        guard ZSTD_isError(ZSTD_DCtx_setParameter(stream, ZSTD_d_windowLogMax, windowLogMax)) == 0 else {
            throw fail("cannot limit the decompression window")
        }
        var produced: Int64 = 0
        let inputCapacity = ZSTD_DStreamInSize()
        let outputCapacity = ZSTD_DStreamOutSize()
        let input = UnsafeMutableRawBufferPointer.allocate(byteCount: inputCapacity, alignment: 64)
        defer { input.deallocate() }
        let output = UnsafeMutableRawBufferPointer.allocate(byteCount: outputCapacity, alignment: 64)
        defer { output.deallocate() }
        var consumed: Int64 = 0
        // 0 when the last call ended a frame (or before any input): a stream may only end there.
        var pending = 0
        var sawFrame = false
        while consumed < range.count {
            let count = Int(min(Int64(inputCapacity), range.count - consumed))
            let piece = UnsafeMutableRawBufferPointer(rebasing: input[0..<count])
            try file.read(into: piece, at: range.offset + consumed)
            if consumed == 0 {
                // The first frame's header may state its size (UInt64.max and .max - 1 mean
                // unknown and invalid): a bomb that says so is refused before any work.
                let claimed = ZSTD_getFrameContentSize(piece.baseAddress, count)
                if claimed < UInt64.max - 1, claimed > UInt64(limit.bytes) {
                    throw fail("the frame claims \(claimed) bytes, more than the \(limit.bytes) bytes \(limit.holder): refused as a decompression bomb")
                }
            }
            var inBuffer = ZSTD_inBuffer(src: UnsafeRawPointer(piece.baseAddress), size: count, pos: 0)
            var outputWasFull = false
            repeat {
                var outBuffer = ZSTD_outBuffer(dst: output.baseAddress, size: outputCapacity, pos: 0)
                let inputBefore = inBuffer.pos
                let result = ZSTD_decompressStream(stream, &outBuffer, &inBuffer)
                if ZSTD_isError(result) != 0 {
                    let position = consumed + Int64(inBuffer.pos)
                    throw fail("\(String(cString: ZSTD_getErrorName(result))) (near compressed byte \(position) of the item)")
                }
                if outBuffer.pos > 0 {
                    produced += Int64(outBuffer.pos)
                    guard produced <= limit.bytes else {
                        throw fail("the item decodes to more than the \(limit.bytes) bytes \(limit.holder) (stopped at compressed byte \(consumed + Int64(inBuffer.pos))): refused as a decompression bomb")
                    }
                    try sink(UnsafeRawBufferPointer(rebasing: output[0..<outBuffer.pos]))
                }
                outputWasFull = outBuffer.pos == outputCapacity
                // A call that moved nothing (the flush after a frame that ended filling the
                // output exactly) answers for the next frame's header, not for this frame.
                if inBuffer.pos > inputBefore || outBuffer.pos > 0 { pending = result }
                sawFrame = true
            } while inBuffer.pos < inBuffer.size || outputWasFull
            consumed += Int64(count)
        }
        guard sawFrame else { throw fail("the item is empty (no zstd frame)") }
        guard pending == 0 else {
            throw fail("the item ends inside a zstd frame (truncated at compressed byte \(range.count))")
        }
    }
}

/// A temporary file for decoded items: created with `mkstemp` in `TMPDIR`, written sequentially,
/// then reopened read-only and unlinked at once, so it vanishes when the last reader closes it.
/// Failures are reported through `fail`, which names the item being decoded.
final class TemporaryFile {
    let path: String
    private var descriptor: CInt
    private var written: Int64 = 0
    private var linked = true
    private let fail: (String) -> MegatronCheckpointError

    init(fail: @escaping (String) -> MegatronCheckpointError) throws {
        self.fail = fail
        let directory = ProcessInfo.processInfo.environment["TMPDIR"].flatMap { $0.isEmpty ? nil : $0 } ?? "/tmp"
        var template = Array((directory as NSString).appendingPathComponent("nembridge-item-XXXXXX").utf8CString)
        let descriptor = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        guard descriptor >= 0 else {
            throw fail("cannot create a temporary file in \(directory): \(String(cString: strerror(errno)))")
        }
        self.descriptor = descriptor
    }

    func append(_ bytes: UnsafeRawBufferPointer) throws {
        var done = 0
        while done < bytes.count {
            let count = pwrite(descriptor, bytes.baseAddress! + done, bytes.count - done, off_t(written))
            if count < 0 {
                if errno == EINTR { continue }
                throw fail("cannot write the temporary file \(path) at \(written): \(String(cString: strerror(errno)))")
            }
            done += count
            written += Int64(count)
        }
    }

    func reopenReadOnlyAndUnlink() throws -> ReadOnlyFile {
        let file = try ReadOnlyFile(path: path, isOwnTemporary: true)
        unlink(path)
        linked = false
        return file
    }

    func closeDescriptor() {
        if descriptor >= 0 {
            close(descriptor)
            descriptor = -1
        }
    }

    deinit {
        closeDescriptor()
        if linked { unlink(path) }
    }
}
