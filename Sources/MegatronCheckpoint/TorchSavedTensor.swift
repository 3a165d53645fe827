import TensorCore
import TorchPickle

/// What a `torch.save` archive's `data.pkl` says about a tensor: which storage record holds its
/// bytes, and how the tensor views it (`_rebuild_tensor_v2` / `_v3`). Python: `torch._utils`.
public struct TorchSavedTensor: Sendable, Equatable {
    public var dtype: DType
    public var shape: [Int]
    /// Strides in elements.
    public var strides: [Int]
    /// Offset of element 0 in the storage, in elements.
    public var storageOffset: Int
    /// The storage record's key: its bytes are `<archive>/data/<key>`.
    public var storageKey: String

    public init(dtype: DType, shape: [Int], strides: [Int]? = nil, storageOffset: Int = 0, storageKey: String = "0") {
        self.dtype = dtype
        self.shape = shape
        self.strides = strides ?? ShapeArithmetic.strides(shape)
        self.storageOffset = storageOffset
        self.storageKey = storageKey
    }

    /// Typed storages torch still pickles by name for `_rebuild_tensor_v2`.
    static let typedStorages: [DType: String] = [
        .float32: "FloatStorage", .float16: "HalfStorage", .bfloat16: "BFloat16Storage", .float64: "DoubleStorage",
        .int64: "LongStorage", .int32: "IntStorage", .int16: "ShortStorage", .int8: "CharStorage", .uint8: "ByteStorage",
        .bool: "BoolStorage", .complex64: "ComplexFloatStorage",
    ]

    public var isContiguous: Bool { strides == ShapeArithmetic.strides(shape) || shape.contains(0) }

    /// Parses `data.pkl` of a tensor archive.
    public init(dataPickle bytes: [UInt8], context: String) throws {
        func fail(_ reason: String) -> MegatronCheckpointError {
            .invalidItem(file: context, key: "data.pkl", offset: 0, reason: reason)
        }
        let value: PickleValue
        do { value = try PickleReader.read(bytes, globals: CheckpointGlobals.policy) } catch { throw fail("\(error)") }
        try self.init(value: value, context: context, name: "data.pkl")
    }

    /// Whether `value` is what torch pickles for a tensor (a `_rebuild_tensor_v2`/`_v3` call).
    public static func isTensor(_ value: PickleValue) -> Bool {
        value.isObject(of: "torch._utils", "_rebuild_tensor_v2") || value.isObject(of: "torch._utils", "_rebuild_tensor_v3")
    }

    /// A tensor as it appears inside a larger pickle (a state dict in `model_optim_rng.pt`);
    /// errors name `context` (the file) and `name` (the entry).
    public init(value: PickleValue, context: String, name: String) throws {
        func fail(_ reason: String) -> MegatronCheckpointError {
            .invalidItem(file: context, key: name, offset: 0, reason: reason)
        }
        guard let call = value.object, let function = call.callable.globalName, function.module == "torch._utils",
            function.name == "_rebuild_tensor_v2" || function.name == "_rebuild_tensor_v3", call.args.count >= 4
        else { throw fail("not a torch.save tensor (expected torch._utils._rebuild_tensor_v2/_v3)") }
        guard case .persistentID(let pid) = call.args[0], case .tuple(let parts) = pid, parts.count == 5,
            parts[0].stringValue == "storage", let storageType = parts[1].globalName, let key = parts[2].stringValue
        else { throw fail("malformed storage reference") }
        guard let offset = call.args[1].intValue, let shape = DCPMetadata.parseSize(call.args[2]),
            let strides = DCPMetadata.parseSize(call.args[3]), shape.count == strides.count, offset >= 0
        else { throw fail("malformed size, stride or storage offset") }
        let dtype: DType
        if function.name == "_rebuild_tensor_v3" {
            guard call.args.count >= 7, let name = call.args[6].globalName, name.module == "torch", let parsed = DType(torchName: name.name) else {
                throw fail("_rebuild_tensor_v3 without a dtype")
            }
            dtype = parsed
        } else {
            guard storageType.module == "torch", let parsed = Self.typedStorages.first(where: { $0.value == storageType.name })?.key else {
                throw fail("unknown storage type \(storageType.module).\(storageType.name)")
            }
            dtype = parsed
        }
        guard !key.contains("/"), !key.contains("\0"), key != ".." else { throw fail("storage key `\(MessageText.quoted(key))` is not a plain name") }
        self.init(dtype: dtype, shape: shape, strides: strides, storageOffset: offset, storageKey: key)
    }

    /// `data.pkl` for a contiguous tensor whose storage is record `0`, exactly as small as torch
    /// writes it: `_rebuild_tensor_v2` with a typed storage, or `_v3` with an untyped one for
    /// FP8 and unsigned types (the count is then in bytes).
    public static func dataPickle(dtype: DType, shape: [Int]) throws -> [UInt8] {
        PickleWriter.write(try pickleValue(dtype: dtype, shape: shape, storageKey: "0"))
    }

    /// The pickled form of a contiguous tensor whose storage is record `storageKey`, as it
    /// appears in any `torch.save` pickle (a lone tensor, or an entry of a state dict).
    public static func pickleValue(dtype: DType, shape: [Int], storageKey: String) throws -> PickleValue {
        guard let elements = ShapeArithmetic.elementCount(shape), let bytes = ShapeArithmetic.byteCount(shape, dtype) else {
            preconditionFailure("shape \(shape) of \(dtype) has no byte size")
        }
        let sizeTuple = PickleValue.tuple(shape.map { .int(Int64($0)) })
        let strideTuple = PickleValue.tuple(ShapeArithmetic.strides(shape).map { .int(Int64($0)) })
        let hooks = PickleValue.reduce(.global("collections", "OrderedDict"), [])
        if let storage = typedStorages[dtype] {
            let pid = PickleValue.persistentID(.tuple([.string("storage"), .global("torch", storage), .string(storageKey), .string("cpu"), .int(Int64(elements))]))
            return .reduce(.global("torch._utils", "_rebuild_tensor_v2"), [pid, .int(0), sizeTuple, strideTuple, .bool(false), hooks])
        }
        guard let torchName = dtype.torchName else { throw MegatronCheckpointError.unsupportedDType(key: "tensor", dtype: dtype.safetensorsName) }
        let pid = PickleValue.persistentID(.tuple([.string("storage"), .global("torch.storage", "UntypedStorage"), .string(storageKey), .string("cpu"), .int(Int64(bytes))]))
        return .reduce(.global("torch._utils", "_rebuild_tensor_v3"),
                       [pid, .int(0), sizeTuple, strideTuple, .bool(false), hooks, .global("torch", torchName)])
    }
}
