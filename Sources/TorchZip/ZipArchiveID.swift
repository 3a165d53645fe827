import TensorCore

/// Names one ZIP archive in messages: the file it lives in, the offset of its first byte in that
/// file (archives inside `.distcp` files start at an item's offset), and a caller's label (the
/// item's key, or the file name again for a stand-alone `.pt`).
public struct ZipArchiveID: Hashable, Sendable, CustomStringConvertible {
    public var path: String
    public var offset: Int64
    public var label: String

    public init(path: String, offset: Int64, label: String) {
        self.path = path
        self.offset = offset
        self.label = label
    }

    /// `file.distcp (zip `label` at 4096)`, or just the path for a whole-file archive labelled by it.
    public var description: String {
        if offset == 0 && (label.isEmpty || label == path) { return MessageText.path(path) }
        return "\(MessageText.path(path)) (zip `\(MessageText.quoted(label))` at \(offset))"
    }
}
