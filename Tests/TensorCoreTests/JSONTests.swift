import TensorCore
import Testing

struct JSONTests {
    @Test("order and duplicates are kept; integers keep their exact text")
    func orderAndNumbers() throws {
        let value = try JSONParser.parse(#" {"b": 1, "a": [18446744073709551615, -0, 2.0, 1e3], "b": null} "#)
        #expect(value.objectMembers?.map(\.key) == ["b", "a", "b"])
        #expect(value["b"]?.isNull == true)
        let numbers = value["a"]?.arrayValue?.compactMap { if case .number(let n) = $0 { n } else { nil } }
        #expect(numbers?.map(\.unsignedValue) == [UInt64.max, nil, nil, nil])
    }

    @Test("serde_json's verdicts", arguments: [
        ("{\"a\":1}\u{0C}", false), ("\u{0C}{}", false), ("{} \t\r\n", true), ("[01]", false), ("[1.]", false),
        ("[1e400]", false), ("[-1e400]", false), ("[1e-400]", true), (#"["\ud800"]"#, false), (#"["\udc00"]"#, false),
        (#"["\ud83d\ude00"]"#, true), ("[\"a\u{01}\"]", false), ("[\"\u{7F}\"]", true), (#"["\x"]"#, false),
        ("[NaN]", false), ("[1,]", false), ("{\"a\":1,}", false), ("[true,false,null]", true), ("", false),
        ("{}{}", false), ("'a'", false),
    ])
    func verdicts(_ text: String, _ accepted: Bool) {
        let result = Result { try JSONParser.parse(text) }
        #expect(((try? result.get()) != nil) == accepted, "\(text)")
    }

    /// Python's `json.loads` verdicts (checked with CPython 3.11): `json.dump` writes
    /// non-finite floats as these bare tokens, and published config.json files carry them.
    @Test("Python's json dialect: NaN, Infinity, -Infinity and nothing else", arguments: [
        ("[NaN, Infinity, -Infinity]", true), ("{\"a\": Infinity}", true), ("[nan]", false), ("[-NaN]", false),
        ("[+Infinity]", false), ("[Infinityx]", false), ("[-Inf]", false), ("[- Infinity]", false),
    ])
    func pythonDialect(_ text: String, _ accepted: Bool) throws {
        let result = Result { try JSONParser.parse(text, dialect: .python) }
        #expect(((try? result.get()) != nil) == accepted, "\(text)")
        #expect((try? JSONParser.parse(text)) == nil, "strict parsing refuses \(text)")
    }

    @Test("non-finite numbers keep their spelling and read as doubles")
    func nonFiniteValues() throws {
        let value = try JSONParser.parse("[0.0, Infinity, -Infinity, NaN]", dialect: .python)
        let doubles = value.arrayValue?.compactMap { if case .number(let n) = $0 { n.doubleValue } else { nil } }
        #expect(doubles?.count == 4)
        #expect(doubles?[1] == .infinity)
        #expect(doubles?[2] == -.infinity)
        #expect(doubles?[3].isNaN == true)
        #expect(JSONWriter.compact(value) == "[0.0,Infinity,-Infinity,NaN]")
    }

    @Test("nesting: 127 levels parse, 128 do not (serde_json's recursion limit)")
    func nesting() {
        let ok = String(repeating: "[", count: 127) + String(repeating: "]", count: 127)
        let deep = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
        #expect((try? JSONParser.parse(ok)) != nil)
        #expect(throws: JSONParser.Failure.self) { try JSONParser.parse(deep) }
    }

    @Test("serde_json compact and Python indented writers")
    func writers() throws {
        let value = try JSONParser.parse(#"{"z": ["é\u0001\"\\\n", 1], "a": {}}"#)
        #expect(JSONWriter.compact(value) == "{\"z\":[\"é\\u0001\\\"\\\\\\n\",1],\"a\":{}}")
        #expect(JSONWriter.pythonIndented(value) == "{\n  \"a\": {},\n  \"z\": [\n    \"\\u00e9\\u0001\\\"\\\\\\n\",\n    1\n  ]\n}")
        #expect(JSONWriter.pythonQuoted("😀\u{7F}") == "\"\\ud83d\\ude00\\u007f\"")
    }
}
