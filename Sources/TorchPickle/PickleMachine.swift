import TensorCore

/// The pickle virtual machine, executing nothing: it follows CPython's `pickle._Unpickler`
/// (`Lib/pickle.py`, one `load_*` method per opcode) but every object it is asked to build is
/// recorded as data.
///
/// Containers live in `Box`es while the stream runs, because pickle mutates memoized containers
/// after storing them (`EMPTY_LIST BINPUT APPENDS`), and every reference fetched from the memo
/// must see those mutations. `STOP` freezes the boxes into a `PickleValue` tree, detecting cycles
/// and counting every value, and the boxes are emptied one by one afterwards so that releasing a
/// hostile, deeply chained graph never recurses.
final class PickleMachine {
    /// A value on the stack or in the memo.
    enum Node {
        case leaf(PickleValue)
        case box(Box)

        var depth: Int {
            switch self {
            case .leaf: 1
            case .box(let box): box.depth
            }
        }
    }

    /// How an object was made; its items live in the box like a list's and a dict's.
    struct ObjectHead {
        var construction: PickleObject.Construction
        var callable: Node
        var args: [Node]
        var kwargs: Node?
        var state: Node?
    }

    /// A container while the stream runs. The parts are separate stored properties, not enum
    /// payloads, so that `box.items.append` grows the array in place: taking a payload out of an
    /// enum to append to it copies the array whenever a temporary still holds it, which made
    /// protocol 0 (one APPEND per element) quadratic.
    final class Box {
        enum Kind: String {
            case tuple, frozenSet = "frozenset", persistentID = "persistent id", list, dict, set, object
        }

        let kind: Kind
        /// Elements (tuple, frozenset, list, set), the id (persistent id), `APPEND`ed items (object).
        var items: [Node]
        /// Entries (dict), `SETITEM`ed entries (object).
        var pairs: [(Node, Node)]
        /// Objects only.
        var head: ObjectHead?
        /// `ADDITEMS`ed values (objects only).
        var setItems: [Node] = []
        /// Height of the subtree as far as known when children were added; exact for immutable
        /// boxes, a lower bound for mutated ones (`freeze` checks the real height).
        var depth: Int
        let offset: Int
        let opcode: PickleOpcode
        var frozen: (value: PickleValue, size: Int, height: Int)?
        var freezing = false

        init(_ kind: Kind, items: [Node], pairs: [(Node, Node)], head: ObjectHead?, depth: Int, offset: Int, opcode: PickleOpcode) {
            self.kind = kind
            self.items = items
            self.pairs = pairs
            self.head = head
            self.depth = depth
            self.offset = offset
            self.opcode = opcode
        }

        /// Drops every reference the box holds.
        func release() {
            items = []
            pairs = []
            head = nil
            setItems = []
            frozen = nil
        }
    }

    let input: UnsafeRawBufferPointer
    let limits: PickleLimits
    let globals: PickleGlobals
    var position = 0
    var opcodeStart = 0
    var currentOpcode = PickleOpcode.proto
    var stack: [Node] = []
    /// Stack heights at each open MARK (Python's `metastack`).
    var marks: [Int] = []
    var memo: [UInt64: Node] = [:]
    var boxes: [Box] = []
    var valueCount = 0

    init(input: UnsafeRawBufferPointer, limits: PickleLimits, globals: PickleGlobals = .any) {
        self.input = input
        self.limits = limits
        self.globals = globals
    }

    deinit {
        // Empty every box before any is released, so that no release chain is deeper than one box.
        for box in boxes { box.release() }
    }

    var site: PickleError.Site { .init(offset: opcodeStart, opcode: currentOpcode.name) }
    var remaining: Int { input.count - position }

    // MARK: - Running

    /// Runs from the start to the first STOP; returns the value and the offset after STOP.
    func run() throws(PickleError) -> (PickleValue, Int) {
        while position < input.count {
            opcodeStart = position
            let byte = input[position]
            position += 1
            guard let opcode = PickleOpcode(rawValue: byte) else {
                throw .unknownOpcode(.init(offset: opcodeStart, opcode: "unknown"), byte: byte)
            }
            currentOpcode = opcode
            if opcode == .stop {
                let result = try pop()
                let value = try freeze(result, depth: 1).value
                return (value, position)
            }
            try execute(opcode)
        }
        throw .missingStop(.init(offset: input.count, opcode: "end of input"))
    }

    private func execute(_ opcode: PickleOpcode) throws(PickleError) {
        switch opcode {
        case .proto:
            let version = Int(try readFixed(1))
            guard version <= 5 else { throw .unsupportedProtocol(site, version: version) }
        case .frame:
            // A framing hint only: the frame must fit in what is left; opcodes are read as usual.
            let length = try readFixed(8)
            guard length <= UInt64(remaining) else { throw .truncated(site, needed: length, available: remaining) }
        case .stop:
            preconditionFailure("STOP is handled by run()")

        // Stack and memo.
        case .mark:
            try checkStackRoom()
            marks.append(stack.count)
        case .pop:
            if stack.count > (marks.last ?? 0) {
                stack.removeLast()
            } else if marks.isEmpty {
                throw .stackUnderflow(site, needed: 1, available: 0)
            } else {
                _ = try popMark()  // Python's load_pop: with nothing above the mark, drop the mark
            }
        case .popMark:
            _ = try popMark()
        case .dup:
            try push(try top())
        case .put:
            memo[try memoKey(readLine())] = try top()
            try checkMemoSize()
        case .binPut, .longBinPut:
            let key = try readFixed(opcode == .binPut ? 1 : 4)
            memo[key] = try top()
            try checkMemoSize()
        case .memoize:
            memo[UInt64(memo.count)] = try top()
            try checkMemoSize()
        case .get, .binGet, .longBinGet:
            let key: UInt64 =
                switch opcode {
                case .get: try memoKey(readLine())
                case .binGet: try readFixed(1)
                default: try readFixed(4)
                }
            guard let node = memo[key] else { throw .memoKeyMissing(site, key: key) }
            try push(node)

        // Scalars.
        case .none: try push(.leaf(.none))
        case .newTrue: try push(.leaf(.bool(true)))
        case .newFalse: try push(.leaf(.bool(false)))
        case .binInt:
            try push(.leaf(.int(Int64(Int32(bitPattern: UInt32(try readFixed(4)))))))
        case .binInt1:
            try push(.leaf(.int(Int64(try readFixed(1)))))
        case .binInt2:
            try push(.leaf(.int(Int64(try readFixed(2)))))
        case .int:
            let text = try readLine()
            if text.elementsEqual("00".utf8) {
                try push(.leaf(.bool(false)))
            } else if text.elementsEqual("01".utf8) {
                try push(.leaf(.bool(true)))
            } else {
                try push(.leaf(try parseInteger(text, allowLongSuffix: false)))
            }
        case .long:
            try push(.leaf(try parseInteger(try readLine(), allowLongSuffix: true)))
        case .long1, .long4:
            let count = try readLength(opcode == .long1 ? 1 : 4, signed: opcode == .long4)
            guard count <= limits.maxBigIntBytes else {
                throw .limitExceeded(site, limit: .bigIntBytes, maximum: limits.maxBigIntBytes)
            }
            let bytes = try readBytes(count)
            try push(.leaf(bytes.isEmpty ? .int(0) : .integer(twosComplement: bytes)))
        case .float:
            let text = String(decoding: try readLine(), as: UTF8.self)
                .trimmingASCIIWhitespace()
            guard !text.isEmpty, let value = Double(text) else {
                throw .invalidArgument(site, reason: "`\(MessageText.quoted(text, limit: 40))` is not a float")
            }
            try push(.leaf(.float(value)))
        case .binFloat:
            try push(.leaf(.float(Double(bitPattern: try readFixed(8, bigEndian: true)))))

        // Text and bytes.
        case .string:
            try push(.leaf(.string(try decodeUTF8(try unquotePythonString(try readLine())))))
        case .binString, .shortBinString:
            let count = try readLength(opcode == .binString ? 4 : 1, signed: true)
            try push(.leaf(.string(try decodeUTF8(try readBytes(count)))))
        case .unicode:
            try push(.leaf(.string(try decodeRawUnicodeEscape(try readLine()))))
        case .shortBinUnicode, .binUnicode, .binUnicode8:
            let width = opcode == .shortBinUnicode ? 1 : opcode == .binUnicode ? 4 : 8
            let count = try readLength(width, signed: false)
            try push(.leaf(.string(try decodeUTF8(try readBytes(count)))))
        case .shortBinBytes, .binBytes, .binBytes8, .byteArray8:
            let width = opcode == .shortBinBytes ? 1 : opcode == .binBytes ? 4 : 8
            let bytes = try readBytes(try readLength(width, signed: false))
            try push(.leaf(opcode == .byteArray8 ? .byteArray(bytes) : .bytes(bytes)))
        case .nextBuffer, .readOnlyBuffer:
            throw .unsupported(site, reason: "out-of-band buffers (pickle protocol 5 `buffers=`) are not available")

        // Containers.
        case .emptyTuple: try push(try makeBox(.tuple, items: []))
        case .tuple: try push(try makeBox(.tuple, items: try popMark()))
        case .tuple1, .tuple2, .tuple3:
            let count = opcode == .tuple1 ? 1 : opcode == .tuple2 ? 2 : 3
            try push(try makeBox(.tuple, items: try popValues(count)))
        case .emptyList: try push(try makeBox(.list, items: []))
        case .list: try push(try makeBox(.list, items: try popMark()))
        case .emptyDict: try push(try makeBox(.dict, items: []))
        case .dict:
            let items = try popMark()
            try push(try makeBox(.dict, pairs: try pairs(items), children: items))
        case .emptySet: try push(try makeBox(.set, items: []))
        case .frozenSet: try push(try makeBox(.frozenSet, items: try popMark()))
        case .append:
            let item = try pop()
            try add(items: [item], to: try top(), as: .list)
        case .appends:
            let items = try popMark()
            try add(items: items, to: try top(), as: .list)
        case .setItem:
            let pair = try popValues(2)
            try add(items: pair, to: try top(), as: .dict)
        case .setItems:
            let items = try popMark()
            try add(items: items, to: try top(), as: .dict)
        case .addItems:
            let items = try popMark()
            try add(items: items, to: try top(), as: .set)

        // Globals and objects.
        case .global:
            let module = try decodeUTF8(Array(try readLine()))
            let name = try decodeUTF8(Array(try readLine()))
            try checkGlobal(module, name)
            try push(.leaf(.global(module: module, name: name)))
        case .stackGlobal:
            let parts = try popValues(2)
            guard case .leaf(.string(let module)) = parts[0], case .leaf(.string(let name)) = parts[1] else {
                throw .wrongType(site, expected: "two str (module, name)", found: "\(kind(parts[0])), \(kind(parts[1]))")
            }
            try checkGlobal(module, name)
            try push(.leaf(.global(module: module, name: name)))
        case .reduce:
            let parts = try popValues(2)
            let args = try tupleItems(parts[1], role: "an argument tuple")
            try push(try makeObject(.init(construction: .reduce, callable: parts[0], args: args), children: [parts[0]] + args))
        case .newObj:
            let parts = try popValues(2)
            let args = try tupleItems(parts[1], role: "an argument tuple")
            try push(try makeObject(.init(construction: .newObject, callable: parts[0], args: args), children: [parts[0]] + args))
        case .newObjEx:
            let parts = try popValues(3)
            let args = try tupleItems(parts[1], role: "an argument tuple")
            guard case .box(let kwargs) = parts[2], kwargs.kind == .dict else {
                throw .wrongType(site, expected: "a keyword-argument dict", found: kind(parts[2]))
            }
            try push(try makeObject(
                .init(construction: .newObjectEx, callable: parts[0], args: args, kwargs: parts[2]),
                children: [parts[0], parts[2]] + args))
        case .inst:
            let module = try decodeUTF8(Array(try readLine()))
            let name = try decodeUTF8(Array(try readLine()))
            try checkGlobal(module, name)
            let args = try popMark()
            let callable = Node.leaf(.global(module: module, name: name))
            try push(try makeObject(.init(construction: .instance, callable: callable, args: args), children: args))
        case .obj:
            let items = try popMark()
            guard let callable = items.first else { throw .stackUnderflow(site, needed: 1, available: 0) }
            try push(try makeObject(
                .init(construction: .instance, callable: callable, args: Array(items.dropFirst())), children: items))
        case .build:
            let state = try pop()
            guard case .box(let box) = try top(), box.kind == .object else {
                throw .wrongType(site, expected: "an object to BUILD", found: kind(try top()))
            }
            box.head?.state = state
            try grow(box, child: state)
        case .persID:
            let line = try readLine()
            guard line.allSatisfy({ $0 < 0x80 }) else {
                throw .invalidArgument(site, reason: "the persistent id is not ASCII")
            }
            try push(try makeBox(.persistentID, items: [.leaf(.string(String(decoding: line, as: UTF8.self)))]))
        case .binPersID:
            try push(try makeBox(.persistentID, items: [try pop()]))
        case .ext1, .ext2, .ext4:
            let code = try readFixed(opcode == .ext1 ? 1 : opcode == .ext2 ? 2 : 4)
            throw .unsupported(site, reason: "extension code \(code) needs Python's copyreg extension registry")
        }
    }

    /// `find_class`: a global outside the allow-list ends the read at the opcode naming it.
    private func checkGlobal(_ module: String, _ name: String) throws(PickleError) {
        guard globals.allows(module: module, name: name) else {
            throw .forbiddenGlobal(site, module: module, name: name)
        }
    }

    // MARK: - Stack

    private func checkStackRoom() throws(PickleError) {
        guard stack.count + marks.count < limits.maxStackSize else {
            throw .limitExceeded(site, limit: .stackSize, maximum: limits.maxStackSize)
        }
    }

    private func push(_ node: Node) throws(PickleError) {
        try checkStackRoom()
        stack.append(node)
    }

    private var available: Int { stack.count - (marks.last ?? 0) }

    private func pop() throws(PickleError) -> Node {
        guard available >= 1 else { throw .stackUnderflow(site, needed: 1, available: available) }
        return stack.removeLast()
    }

    private func top() throws(PickleError) -> Node {
        guard available >= 1 else { throw .stackUnderflow(site, needed: 1, available: available) }
        return stack[stack.count - 1]
    }

    /// The top `count` values, oldest first.
    private func popValues(_ count: Int) throws(PickleError) -> [Node] {
        guard available >= count else { throw .stackUnderflow(site, needed: count, available: available) }
        let values = Array(stack[(stack.count - count)...])
        stack.removeLast(count)
        return values
    }

    /// The values above the last mark, oldest first; removes them and the mark.
    private func popMark() throws(PickleError) -> [Node] {
        guard let mark = marks.popLast() else { throw .markNotFound(site) }
        let values = Array(stack[mark...])
        stack.removeSubrange(mark...)
        return values
    }

    private func checkMemoSize() throws(PickleError) {
        guard memo.count <= limits.maxMemoEntries else {
            throw .limitExceeded(site, limit: .memoEntries, maximum: limits.maxMemoEntries)
        }
    }

    // MARK: - Containers

    private func makeBox(
        _ kind: Box.Kind, items: [Node] = [], pairs: [(Node, Node)] = [], head: ObjectHead? = nil, children: [Node]? = nil
    ) throws(PickleError) -> Node {
        let depth = ((children ?? items).lazy.map(\.depth).max() ?? 0) + 1
        guard depth <= limits.maxDepth else {
            throw .limitExceeded(site, limit: .depth, maximum: limits.maxDepth)
        }
        let box = Box(kind, items: items, pairs: pairs, head: head, depth: depth, offset: opcodeStart, opcode: currentOpcode)
        boxes.append(box)
        return .box(box)
    }

    private func makeObject(_ head: ObjectHead, children: [Node]) throws(PickleError) -> Node {
        try makeBox(.object, head: head, children: children)
    }

    /// Records that `child` now hangs below `box`.
    private func grow(_ box: Box, child: Node) throws(PickleError) {
        box.depth = max(box.depth, child.depth + 1)
        guard box.depth <= limits.maxDepth else {
            throw .limitExceeded(site, limit: .depth, maximum: limits.maxDepth)
        }
    }

    private enum Addition { case list, dict, set }

    /// APPEND(S), SETITEM(S), ADDITEMS: onto the container of that kind, or onto an object
    /// (a list, dict or set subclass, whose items the object records).
    private func add(items: [Node], to target: Node, as addition: Addition) throws(PickleError) {
        let expected = addition == .list ? "a list" : addition == .dict ? "a dict" : "a set"
        guard case .box(let box) = target else {
            throw .wrongType(site, expected: "\(expected) or an object", found: kind(target))
        }
        switch (addition, box.kind) {
        case (.list, .list), (.dict, .dict), (.set, .set), (_, .object): break
        default: throw .wrongType(site, expected: "\(expected) or an object", found: box.kind.rawValue)
        }
        switch (addition, box.kind) {
        case (.dict, _): box.pairs.append(contentsOf: try pairs(items))
        case (.set, .object): box.setItems.append(contentsOf: items)
        default: box.items.append(contentsOf: items)  // list, set, or an object's list items
        }
        for item in items { try grow(box, child: item) }
    }

    private func pairs(_ items: [Node]) throws(PickleError) -> [(Node, Node)] {
        guard items.count % 2 == 0 else {
            throw .invalidArgument(site, reason: "odd number of items (\(items.count)) for key/value pairs")
        }
        return stride(from: 0, to: items.count, by: 2).map { (items[$0], items[$0 + 1]) }
    }

    private func tupleItems(_ node: Node, role: String) throws(PickleError) -> [Node] {
        guard case .box(let box) = node, box.kind == .tuple else {
            throw .wrongType(site, expected: role, found: kind(node))
        }
        return box.items
    }

    private func kind(_ node: Node) -> String {
        switch node {
        case .leaf(let value): value.kindName
        case .box(let box): box.kind.rawValue
        }
    }

    // MARK: - Freezing

    /// The node as a value tree; `depth` is the node's level (the result is level 1).
    private func freeze(_ node: Node, depth: Int) throws(PickleError) -> (value: PickleValue, height: Int) {
        guard depth <= limits.maxDepth else {
            throw .limitExceeded(site, limit: .depth, maximum: limits.maxDepth)
        }
        switch node {
        case .leaf(let value):
            try count(1)
            return (value, 1)
        case .box(let box):
            if let frozen = box.frozen {
                guard depth + frozen.height - 1 <= limits.maxDepth else {
                    throw .limitExceeded(site, limit: .depth, maximum: limits.maxDepth)
                }
                try count(frozen.size)
                return (frozen.value, frozen.height)
            }
            guard !box.freezing else {
                throw .cycle(.init(offset: box.offset, opcode: box.opcode.name))
            }
            box.freezing = true
            defer { box.freezing = false }
            let before = valueCount
            try count(1)
            var height = 0
            func child(_ node: Node) throws(PickleError) -> PickleValue {
                let (value, childHeight) = try freeze(node, depth: depth + 1)
                height = max(height, childHeight)
                return value
            }
            func children(_ nodes: [Node]) throws(PickleError) -> [PickleValue] {
                var values: [PickleValue] = []
                values.reserveCapacity(nodes.count)
                for node in nodes { values.append(try child(node)) }
                return values
            }
            func entries(_ pairs: [(Node, Node)]) throws(PickleError) -> [(key: PickleValue, value: PickleValue)] {
                var values: [(key: PickleValue, value: PickleValue)] = []
                values.reserveCapacity(pairs.count)
                for (key, value) in pairs { values.append((try child(key), try child(value))) }
                return values
            }
            let value: PickleValue
            switch box.kind {
            case .tuple: value = .tuple(try children(box.items))
            case .frozenSet: value = .frozenSet(try children(box.items))
            case .persistentID: value = .persistentID(try child(box.items[0]))
            case .list: value = .list(try children(box.items))
            case .dict: value = .dict(try entries(box.pairs))
            case .set: value = .set(try children(box.items))
            case .object:
                guard let head = box.head else { preconditionFailure("an object box has a head") }
                var kwargs: [(key: PickleValue, value: PickleValue)] = []
                if let node = head.kwargs {
                    guard case .dict(let pairs) = try child(node) else {
                        throw .wrongType(site, expected: "a keyword-argument dict", found: "another value")
                    }
                    kwargs = pairs
                }
                value = .object(PickleObject(
                    construction: head.construction, callable: try child(head.callable),
                    args: try children(head.args), kwargs: kwargs,
                    state: try head.state.map { node throws(PickleError) in try child(node) },
                    listItems: try children(box.items), dictItems: try entries(box.pairs),
                    setItems: try children(box.setItems)))
            }
            box.frozen = (value, valueCount - before, height + 1)
            return (value, height + 1)
        }
    }

    private func count(_ values: Int) throws(PickleError) {
        valueCount += values
        guard valueCount <= limits.maxValues else {
            throw .limitExceeded(site, limit: .values, maximum: limits.maxValues)
        }
    }

    // MARK: - Reading arguments

    /// A little-endian (or big-endian) unsigned field of `width` bytes.
    private func readFixed(_ width: Int, bigEndian: Bool = false) throws(PickleError) -> UInt64 {
        guard remaining >= width else { throw .truncated(site, needed: UInt64(width), available: remaining) }
        var value: UInt64 = 0
        for index in 0..<width {
            let byte = UInt64(input[position + (bigEndian ? index : width - 1 - index)])
            value = value << 8 | byte
        }
        position += width
        return value
    }

    /// A length field; `signed` fields (BINSTRING, LONG4) must not be negative.
    private func readLength(_ width: Int, signed: Bool) throws(PickleError) -> Int {
        let raw = try readFixed(width)
        if signed && width == 4 && raw & 0x8000_0000 != 0 {
            throw .invalidArgument(site, reason: "negative length \(Int32(bitPattern: UInt32(raw)))")
        }
        guard raw <= UInt64(remaining) else { throw .truncated(site, needed: raw, available: remaining) }
        return Int(raw)
    }

    private func readBytes(_ count: Int) throws(PickleError) -> [UInt8] {
        guard count <= remaining else { throw .truncated(site, needed: UInt64(count), available: remaining) }
        let bytes = Array(UnsafeRawBufferPointer(rebasing: input[position..<(position + count)]))
        position += count
        return bytes
    }

    /// The bytes up to the next newline, which is consumed but not returned.
    private func readLine() throws(PickleError) -> ArraySlice<UInt8> {
        var end = position
        while end < input.count && input[end] != 0x0A { end += 1 }
        guard end < input.count else { throw .missingNewline(site) }
        let line = ArraySlice(UnsafeRawBufferPointer(rebasing: input[position..<end]))
        position = end + 1
        return line
    }

    private func memoKey(_ line: ArraySlice<UInt8>) throws(PickleError) -> UInt64 {
        let text = String(decoding: line, as: UTF8.self)
        guard let key = UInt64(text.trimmingASCIIWhitespace()) else {
            throw .invalidArgument(site, reason: "memo key `\(MessageText.quoted(text, limit: 40))` is not a non-negative integer")
        }
        return key
    }

    private func decodeUTF8(_ bytes: some Collection<UInt8>) throws(PickleError) -> String {
        guard let text = String(validating: bytes, as: UTF8.self) else {
            throw .invalidArgument(site, reason: "text is not valid UTF-8")
        }
        return text
    }

    /// Python's `int(text, 0)` as `load_int`/`load_long` use it: optional sign, optional
    /// `0x`/`0o`/`0b` prefix, digits; `LONG` may end in `L`.
    private func parseInteger(_ line: ArraySlice<UInt8>, allowLongSuffix: Bool) throws(PickleError) -> PickleValue {
        var text = Substring(String(decoding: line, as: UTF8.self).trimmingASCIIWhitespace())
        if allowLongSuffix && text.hasSuffix("L") { text = text.dropLast() }
        let original = text
        var negative = false
        if let first = text.first, first == "-" || first == "+" {
            negative = first == "-"
            text = text.dropFirst()
        }
        var radix: UInt32 = 10
        let lower = text.lowercased()
        if lower.hasPrefix("0x") { radix = 16 } else if lower.hasPrefix("0o") { radix = 8 } else if lower.hasPrefix("0b") { radix = 2 }
        if radix != 10 { text = text.dropFirst(2) }
        guard text.count <= limits.maxIntDigits else {
            throw .limitExceeded(site, limit: .intDigits, maximum: limits.maxIntDigits)
        }
        var digits: [UInt32] = []
        digits.reserveCapacity(text.count)
        for character in text {
            guard let digit = character.hexDigitValue, digit < radix else {
                throw .invalidArgument(site, reason: "`\(MessageText.quoted(original, limit: 40))` is not an integer")
            }
            digits.append(UInt32(digit))
        }
        guard !digits.isEmpty, radix != 10 || digits.count == 1 || digits[0] != 0 || digits.allSatisfy({ $0 == 0 }) else {
            throw .invalidArgument(site, reason: "`\(MessageText.quoted(original, limit: 40))` is not an integer")
        }
        let big = PickleBigInt(digits: digits, radix: radix, negative: negative)
        return .integer(twosComplement: big.littleEndianBytes)
    }

    /// The argument of protocol 0 `STRING`: a quoted Python 2 byte-string literal, decoded as
    /// `codecs.escape_decode` does.
    private func unquotePythonString(_ line: ArraySlice<UInt8>) throws(PickleError) -> [UInt8] {
        var body = Array(line)
        while let last = body.last, last == 0x20 || last == 0x09 || last == 0x0D { body.removeLast() }
        guard body.count >= 2, body[0] == body[body.count - 1], body[0] == 0x27 || body[0] == 0x22 else {
            throw .invalidArgument(site, reason: "the STRING argument must be quoted")
        }
        body = Array(body[1..<(body.count - 1)])
        var out: [UInt8] = []
        out.reserveCapacity(body.count)
        var index = 0
        func hex(_ byte: UInt8) -> UInt8? {
            switch byte {
            case 0x30...0x39: byte - 0x30
            case 0x61...0x66: byte - 0x61 + 10
            case 0x41...0x46: byte - 0x41 + 10
            default: nil
            }
        }
        while index < body.count {
            let byte = body[index]
            index += 1
            guard byte == 0x5C else { out.append(byte); continue }
            guard index < body.count else {
                throw .invalidArgument(site, reason: "trailing backslash in STRING")
            }
            let escape = body[index]
            index += 1
            switch escape {
            case 0x0A: break  // backslash-newline continues the line
            case 0x5C, 0x27, 0x22: out.append(escape)
            case 0x61: out.append(0x07)  // \a
            case 0x62: out.append(0x08)  // \b
            case 0x66: out.append(0x0C)  // \f
            case 0x6E: out.append(0x0A)  // \n
            case 0x72: out.append(0x0D)  // \r
            case 0x74: out.append(0x09)  // \t
            case 0x76: out.append(0x0B)  // \v
            case 0x30...0x37:
                var value = UInt32(escape - 0x30)
                var digits = 1
                while digits < 3, index < body.count, (0x30...0x37).contains(body[index]) {
                    value = value * 8 + UInt32(body[index] - 0x30)
                    index += 1
                    digits += 1
                }
                out.append(UInt8(truncatingIfNeeded: value))
            case 0x78:  // \xhh
                guard index + 1 < body.count, let high = hex(body[index]), let low = hex(body[index + 1]) else {
                    throw .invalidArgument(site, reason: "invalid \\x escape in STRING")
                }
                out.append(high << 4 | low)
                index += 2
            default:
                out.append(0x5C)
                out.append(escape)
            }
        }
        return out
    }

    /// The argument of protocol 0 `UNICODE`: Latin-1 text where `\uXXXX` and `\UXXXXXXXX` (after
    /// an odd number of backslashes) are code points, as Python's `raw-unicode-escape` codec.
    private func decodeRawUnicodeEscape(_ line: ArraySlice<UInt8>) throws(PickleError) -> String {
        let bytes = Array(line)
        var scalars = String.UnicodeScalarView()
        var index = 0
        var backslashes = 0
        while index < bytes.count {
            let byte = bytes[index]
            if byte == 0x5C, backslashes % 2 == 0, index + 1 < bytes.count,
                bytes[index + 1] == 0x75 || bytes[index + 1] == 0x55
            {
                let width = bytes[index + 1] == 0x75 ? 4 : 8
                let digits = bytes[min(index + 2, bytes.count)..<min(index + 2 + width, bytes.count)]
                guard digits.count == width, digits.allSatisfy({ Character(Unicode.Scalar($0)).isHexDigit }),
                    let code = UInt32(String(decoding: digits, as: UTF8.self), radix: 16),
                    let scalar = Unicode.Scalar(code)
                else {
                    throw .invalidArgument(site, reason: "invalid \\u escape in UNICODE")
                }
                scalars.append(scalar)
                index += 2 + width
                backslashes = 0
                continue
            }
            backslashes = byte == 0x5C ? backslashes + 1 : 0
            scalars.append(Unicode.Scalar(byte))
            index += 1
        }
        return String(scalars)
    }
}

extension String {
    func trimmingASCIIWhitespace() -> String {
        let isSpace: (UInt8) -> Bool = { $0 == 0x20 || $0 == 0x09 || $0 == 0x0D || $0 == 0x0A || $0 == 0x0B || $0 == 0x0C }
        let bytes = Array(utf8)
        guard let start = bytes.firstIndex(where: { !isSpace($0) }),
            let end = bytes.lastIndex(where: { !isSpace($0) })
        else { return "" }
        return String(decoding: bytes[start...end], as: UTF8.self)
    }
}
