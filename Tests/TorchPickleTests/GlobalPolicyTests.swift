import Testing
import TorchPickle

/// The allow-list of globals: checked where the pickle names a global, like `find_class`.
struct GlobalPolicyTests {
    static let policy = PickleGlobals.only(["collections.OrderedDict"])

    @Test("GLOBAL, STACK_GLOBAL and INST outside the allow-list fail at their opcode", arguments: [
        // GLOBAL os system; BINUNICODE "id"; TUPLE1; REDUCE; POP; EMPTY_DICT; STOP
        ([0x80, 0x02] + Array("cos\nsystem\n".utf8) + [0x58, 2, 0, 0, 0] + Array("id".utf8) + [0x85, 0x52, 0x30, 0x7D, 0x2E], "GLOBAL", 2),
        // SHORT_BINUNICODE "builtins" "eval"; STACK_GLOBAL; POP; NONE; STOP
        ([0x80, 0x04, 0x8C, 8] + Array("builtins".utf8) + [0x8C, 4] + Array("eval".utf8) + [0x93, 0x30, 0x4E, 0x2E], "STACK_GLOBAL", 18),
        // MARK; INST os system; POP; NONE; STOP
        ([0x28] + Array("ios\nsystem\n".utf8) + [0x30, 0x4E, 0x2E], "INST", 1),
    ])
    func refused(_ bytes: [UInt8], _ opcode: String, _ offset: Int) throws {
        let error = #expect(throws: PickleError.self) { try PickleReader.read(bytes, globals: Self.policy) }
        guard case .forbiddenGlobal(let site, let module, let name)? = error else { Issue.record("\(String(describing: error))"); return }
        #expect(site.opcode == opcode && site.offset == offset)
        #expect(["os.system", "builtins.eval"].contains("\(module).\(name)"))
        #expect(error?.withContext("common.pt").description.hasPrefix("common.pt: \(opcode) at offset \(offset) names `\(module).\(name)`") == true)
        // Without a policy the same bytes are data.
        _ = try PickleReader.read(bytes)
    }

    @Test("allowed globals read as before")
    func allowed() throws {
        let bytes = PickleWriter.write(.reduce(.global("collections", "OrderedDict"), []))
        #expect(try PickleReader.read(bytes, globals: Self.policy).isObject(of: "collections", "OrderedDict"))
        #expect(PickleGlobals.any.allows(module: "os", name: "system"))
        #expect(!Self.policy.allows(module: "os", name: "system"))
    }

    @Test("names in messages are quoted")
    func quotedNames() {
        let error = PickleError.forbiddenGlobal(.init(offset: 0, opcode: "GLOBAL"), module: "os\nx", name: "sys\u{1B}tem")
        #expect(error.description == "GLOBAL at offset 0 names `os\\nx.sys\\x1Btem`, which is not one of the globals this format uses")
    }
}
