import TensorCore
import Testing

/// Untrusted text in messages: one line, no terminal controls, bounded length.
struct MessageTextTests {
    @Test("line breaks, tabs and control bytes are escaped")
    func escapes() {
        #expect(MessageText.quoted("a\nb\tc\rd") == "a\\nb\\tc\\rd")
        #expect(MessageText.quoted("\u{1B}[2J\u{07}\u{00}\u{7F}") == "\\x1B[2J\\x07\\x00\\x7F")
        #expect(MessageText.quoted("x\u{85}y\u{2028}z\u{202E}") == "x\\u{0085}y\\u{2028}z\\u{202E}")
        #expect(MessageText.quoted("decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight")
        #expect(MessageText.quoted("ünïcödé ✓ 日本") == "ünïcödé ✓ 日本")
    }

    @Test("escaping is idempotent, so quoted parts can be quoted again")
    func idempotent() {
        let once = MessageText.quoted("a\nb\u{1B}c", limit: nil)
        #expect(MessageText.quoted(once, limit: nil) == once)
        #expect(!MessageText.needsEscaping(once))
        #expect(MessageText.needsEscaping("a\nb"))
    }

    @Test("long text is cut with an ellipsis; paths get a longer cap")
    func caps() {
        let long = String(repeating: "x", count: 1000)
        #expect(MessageText.quoted(long) == String(repeating: "x", count: 200) + "…")
        #expect(MessageText.quoted(long, limit: 10) == "xxxxxxxxxx…")
        #expect(MessageText.quoted(String(repeating: "x", count: 200)) == String(repeating: "x", count: 200))
        #expect(MessageText.path(long) == long)
        #expect(MessageText.quoted(long, limit: nil) == long)
    }

    @Test("invalid UTF-8 becomes U+FFFD")
    func invalidUTF8() {
        #expect(MessageText.quoted(bytes: [0x61, 0xFF, 0xC3, 0x0A, 0x62]) == "a\u{FFFD}\u{FFFD}\\nb")
        #expect(MessageText.quoted(bytes: [UInt8](repeating: 0x41, count: 5000)).count == 201)
    }
}
