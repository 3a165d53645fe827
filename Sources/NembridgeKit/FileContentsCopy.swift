import Foundation
import TensorCore

/// Copies a file's contents to `destination`. A Hugging Face hub cache snapshot is a folder of
/// relative symlinks into `../../blobs/`; copied as links they would dangle (or point elsewhere)
/// in the output, so the link is followed. The source must be a regular file: a FIFO or device
/// among the companion files is refused by type (`FileIOError.notARegularFile`) instead of being
/// read forever or copied as a special file.
func copyFileContents(from source: String, to destination: String) throws {
    let input = try ReadOnlyFile(path: source)
    let output = try AtomicOutputFile(path: destination)
    let range = ByteRange(offset: 0, count: input.size)
    if try !output.copy(from: input, range: range, to: 0) {
        var done: Int64 = 0
        while done < input.size {
            let count = min(input.size - done, 1 << 20)
            try output.write(try input.readBytes(ByteRange(offset: done, count: count)), at: done)
            done += count
        }
    }
    try output.publish()
}

/// Copies the folder `source` (directories and regular files, links followed) to `destination`,
/// which must not exist.
func copyFolderContents(from source: String, to destination: String) throws {
    try FileManager.default.createDirectory(atPath: destination, withIntermediateDirectories: false)
    for name in try FileManager.default.contentsOfDirectory(atPath: source).sorted() {
        let path = (source as NSString).appendingPathComponent(name)
        let target = (destination as NSString).appendingPathComponent(name)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory), isDirectory.boolValue {
            try copyFolderContents(from: path, to: target)
        } else {
            try copyFileContents(from: path, to: target)
        }
    }
}
