import TensorCore

/// What a pickle describes, as plain data: nothing is imported, resolved or called.
///
/// A global (`GLOBAL torch Size`) stays a named reference, and every call the pickle asks for
/// (`REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`, `OBJ`) becomes a `PickleObject` that records the
/// callable, the arguments and whatever `BUILD`, `APPEND(S)`, `SETITEM(S)` or `ADDITEMS` did to
/// it afterwards. Containers shared through the memo appear once per reference.
///
/// Names are kept as the file spells them: protocol 0–2 files written by Python 3 call the
/// builtins module `__builtin__` and copyreg `copy_reg` (Python maps them back on load).
public indirect enum PickleValue: Sendable {
    case none
    case bool(Bool)
    /// Every integer that fits `Int64`.
    case int(Int64)
    /// Integers beyond `Int64`; build through `integer(twosComplement:)` to keep one spelling.
    case bigInt(PickleBigInt)
    case float(Double)
    case string(String)
    case bytes([UInt8])
    /// `BYTEARRAY8` (protocol 5).
    case byteArray([UInt8])
    case tuple([PickleValue])
    case list([PickleValue])
    /// Entries in insertion order; keys may be any value (`MetadataIndex` objects in DCP).
    case dict([(key: PickleValue, value: PickleValue)])
    case set([PickleValue])
    case frozenSet([PickleValue])
    /// A reference to `module.name`, never imported.
    case global(module: String, name: String)
    case object(PickleObject)
    /// `PERSID`/`BINPERSID`: the id the pickler's `persistent_id` returned (torch: a storage tuple).
    case persistentID(PickleValue)
}

extension PickleValue: Equatable {
    /// Structural equality; floats compare by bit pattern, so a NaN equals the same NaN.
    public static func == (lhs: PickleValue, rhs: PickleValue) -> Bool {
        switch (lhs, rhs) {
        case (.none, .none): true
        case (.bool(let a), .bool(let b)): a == b
        case (.int(let a), .int(let b)): a == b
        case (.bigInt(let a), .bigInt(let b)): a == b
        case (.float(let a), .float(let b)): a.bitPattern == b.bitPattern
        case (.string(let a), .string(let b)): a == b
        case (.bytes(let a), .bytes(let b)): a == b
        case (.byteArray(let a), .byteArray(let b)): a == b
        case (.tuple(let a), .tuple(let b)): a == b
        case (.list(let a), .list(let b)): a == b
        case (.dict(let a), .dict(let b)): entriesEqual(a, b)
        case (.set(let a), .set(let b)): a == b
        case (.frozenSet(let a), .frozenSet(let b)): a == b
        case (.global(let m1, let n1), .global(let m2, let n2)): m1 == m2 && n1 == n2
        case (.object(let a), .object(let b)): a == b
        case (.persistentID(let a), .persistentID(let b)): a == b
        default: false
        }
    }

    static func entriesEqual(
        _ a: [(key: PickleValue, value: PickleValue)], _ b: [(key: PickleValue, value: PickleValue)]
    ) -> Bool {
        a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
}

// MARK: - Building values (for the writer)

extension PickleValue {
    /// `GLOBAL module name`.
    public static func global(_ module: String, _ name: String) -> PickleValue {
        .global(module: module, name: name)
    }

    /// `callable(*args)` through `REDUCE`, e.g. `.reduce(.global("torch", "Size"), [.tuple(dims)])`.
    public static func reduce(_ callable: PickleValue, _ args: [PickleValue]) -> PickleValue {
        .object(PickleObject(construction: .reduce, callable: callable, args: args))
    }

    /// `cls.__new__(cls, *args)` through `NEWOBJ`, then `BUILD state` when `state` is not nil:
    /// how dataclasses and `argparse.Namespace` pickle.
    public static func newObject(
        _ cls: PickleValue, _ args: [PickleValue] = [], _ state: PickleValue? = nil
    ) -> PickleValue {
        .object(PickleObject(construction: .newObject, callable: cls, args: args, state: state))
    }

    /// A Python `int` from little-endian two's complement bytes, as `.int` when it fits `Int64`.
    public static func integer(twosComplement bytes: [UInt8]) -> PickleValue {
        let big = PickleBigInt(twosComplement: bytes)
        if let small = big.int64Value { return .int(small) }
        return .bigInt(big)
    }

    /// A Python `int` written in decimal, as `.int` when it fits `Int64`; nil if not a number.
    public static func integer(decimal text: String) -> PickleValue? {
        if let small = Int64(text) { return .int(small) }
        return PickleBigInt(decimal: text).map { .integer(twosComplement: $0.littleEndianBytes) }
    }

    /// A string-keyed dict, in the given order.
    public static func stringDict(_ entries: KeyValuePairs<String, PickleValue>) -> PickleValue {
        .dict(entries.map { (key: .string($0.key), value: $0.value) })
    }
}

// MARK: - Reading values

extension PickleValue {
    /// A field of a dict with string keys (last occurrence), or of an object's `BUILD` state: a
    /// dict state, or the `(state, slotstate)` pair `copyreg` makes for objects with slots.
    public subscript(field: String) -> PickleValue? {
        switch self {
        case .dict(let entries):
            return entries.last(where: { $0.key == .string(field) })?.value
        case .object(let object):
            guard let state = object.state else { return nil }
            if case .dict = state { return state[field] }
            if case .tuple(let parts) = state, parts.count == 2 {
                return parts[0][field] ?? parts[1][field]
            }
            return nil
        default:
            return nil
        }
    }

    /// Whether this is the global reference `module.name`.
    public func isGlobal(_ module: String, _ name: String) -> Bool {
        if case .global(module, name) = self { return true }
        return false
    }

    /// The global's module and name, or nil.
    public var globalName: (module: String, name: String)? {
        if case .global(let module, let name) = self { return (module, name) }
        return nil
    }

    /// Whether this is an object made by calling the global `module.name` (through any of
    /// `REDUCE`, `NEWOBJ`, `NEWOBJ_EX`, `INST`, `OBJ`).
    public func isObject(of module: String, _ name: String) -> Bool {
        object?.callable.isGlobal(module, name) ?? false
    }

    public var object: PickleObject? {
        if case .object(let object) = self { return object }
        return nil
    }

    /// The integer when it fits `Int64`.
    public var int64Value: Int64? {
        if case .int(let value) = self { return value }
        return nil
    }

    /// The integer when it fits `Int`.
    public var intValue: Int? { int64Value.flatMap { Int(exactly: $0) } }

    public var boolValue: Bool? {
        if case .bool(let flag) = self { return flag }
        return nil
    }

    /// A float, or an integer that converts exactly.
    public var doubleValue: Double? {
        switch self {
        case .float(let value): value
        case .int(let value): Double(exactly: value)
        default: nil
        }
    }

    public var stringValue: String? {
        if case .string(let text) = self { return text }
        return nil
    }

    public var bytesValue: [UInt8]? {
        switch self {
        case .bytes(let bytes), .byteArray(let bytes): bytes
        default: nil
        }
    }

    public var isNone: Bool {
        if case .none = self { return true }
        return false
    }

    /// The elements of a tuple, list, set or frozenset.
    public var items: [PickleValue]? {
        switch self {
        case .tuple(let items), .list(let items), .set(let items), .frozenSet(let items): items
        default: nil
        }
    }

    /// The entries of a dict, or those set on an object with `SETITEM(S)` (`OrderedDict`).
    public var dictEntries: [(key: PickleValue, value: PickleValue)]? {
        switch self {
        case .dict(let entries): entries
        case .object(let object): object.dictItems
        default: nil
        }
    }

    /// A short name of the kind of value, for messages (`tuple`, `object torch.Size`).
    public var kindName: String {
        switch self {
        case .none: "None"
        case .bool: "bool"
        case .int, .bigInt: "int"
        case .float: "float"
        case .string: "str"
        case .bytes: "bytes"
        case .byteArray: "bytearray"
        case .tuple: "tuple"
        case .list: "list"
        case .dict: "dict"
        case .set: "set"
        case .frozenSet: "frozenset"
        case .global(let module, let name): "global \(MessageText.quoted(module)).\(MessageText.quoted(name))"
        case .object(let object):
            if let (module, name) = object.callable.globalName {
                "object \(MessageText.quoted(module)).\(MessageText.quoted(name))"
            } else {
                "object"
            }
        case .persistentID: "persistent id"
        }
    }
}
