import TensorCore
import TorchPickle

/// Every global the pickles of these checkpoint formats refer to, in one place: DCP `.metadata`,
/// the `data.pkl` of `torch.save` archives (`.distcp` items, `common.pt`, ShardedObjects) and
/// the legacy `model_optim_rng.pt` files. Any other global (`os.system`, `builtins.eval`, …) is
/// refused when the pickle names it, as `torch.load(weights_only=True)` refuses it; nothing a
/// pickle names is ever called either way.
///
/// Collected from the committed fixtures (real torch 2.13 and Megatron-Core 0.15/0.19 files),
/// from nembridge's own writers, from torch's weights-only allow-list for tensors and storages,
/// and from Megatron-Core's `SAFE_GLOBALS` (`megatron/core/safe_globals.py`), which lists what
/// its `args`, RNG and rerun state pickle.
public enum CheckpointGlobals {
    /// `module.name` spellings.
    public static let names: Set<String> = {
        var names: Set<String> = [
            // Python builtins and their protocol-2 spellings (`__builtin__`, `copy_reg`).
            "collections.OrderedDict", "_codecs.encode", "_io.BytesIO", "io.BytesIO",
            "argparse.Namespace", "types.SimpleNamespace", "pathlib.PosixPath", "pathlib.Path", "signal.Signals",
            "copyreg._reconstructor", "copy_reg._reconstructor",
            // torch tensors and storages (`torch._utils`, `torch.serialization`).
            "torch.Size", "torch.device", "torch.strided",
            "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3", "torch._utils._rebuild_parameter",
            "torch._tensor._rebuild_from_type_v2", "torch.nn.parameter.Parameter",
            // the type `_rebuild_from_type_v2` restores: a plain tensor that carries Python
            // attributes (the fp16 optimizer's fp32 master copies in a legacy rank file)
            "torch.Tensor", "torch._tensor.Tensor",
            "torch.serialization._get_layout", "torch.storage.UntypedStorage", "torch.storage.TypedStorage",
            "torch._C.Generator",
            // DCP metadata (`.metadata`) and the save plans Megatron keeps in it.
            "torch.distributed.checkpoint.filesystem._StorageInfo",
            "megatron.core.dist_checkpointing.strategies.torch.MCoreMetadata",
            "megatron.core.dist_checkpointing.strategies.torch.MCoreSavePlan",
            // Megatron-Core's `args` and state (SAFE_GLOBALS, and the enums its args hold).
            "megatron.core.enums.ModelType", "megatron.core.enums.Fp8Recipe", "megatron.core.enums.Fp4Recipe",
            "megatron.core.optimizer.optimizer_config.OptimizerConfig",
            "megatron.core.rerun_state_machine.RerunDiagnostic", "megatron.core.rerun_state_machine.RerunMode",
            "megatron.core.rerun_state_machine.RerunState",
            // numpy arrays in RNG state (numpy 1.x and 2.x module names).
            "numpy.ndarray", "numpy.dtype", "numpy.dtypes.UInt32DType",
            "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
            "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
        ]
        for builtin in ["set", "frozenset", "bytearray", "bytes", "complex", "slice", "object", "list", "dict", "tuple"] {
            names.insert("builtins.\(builtin)")
            names.insert("__builtin__.\(builtin)")
        }
        for name in ["Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata", "TensorProperties",
                     "MetadataIndex", "StorageMeta", "_MEM_FORMAT_ENCODING"] {
            names.insert("torch.distributed.checkpoint.metadata.\(name)")
        }
        for name in ["SavePlan", "LoadPlan", "WriteItem", "ReadItem", "WriteItemType", "LoadItemType", "TensorWriteData",
                     "BytesIOWriteData"] {
            names.insert("torch.distributed.checkpoint.planner.\(name)")
        }
        for name in ["ModelType", "LayerType", "AttnType", "AttnMaskType", "AttnBackend", "CudaGraphModule", "CudaGraphScope",
                     "InferenceCudaGraphScope"] {
            names.insert("megatron.core.transformer.enums.\(name)")
        }
        // Every torch dtype (`torch.bfloat16`), including those nembridge does not convert.
        for dtype in DType.allCases { if let name = dtype.torchName { names.insert("torch.\(name)") } }
        for name in ["complex32", "complex128", "qint8", "qint32", "quint8", "quint4x2", "quint2x4"] { names.insert("torch.\(name)") }
        // The typed storages `_rebuild_tensor_v2` names.
        for storage in ["Float", "Half", "BFloat16", "Double", "Long", "Int", "Short", "Char", "Byte", "Bool", "ComplexFloat",
                        "ComplexDouble"] {
            names.insert("torch.\(storage)Storage")
        }
        return names
    }()

    /// The reader's policy for checkpoint pickles.
    public static let policy = PickleGlobals.only(names)
}
