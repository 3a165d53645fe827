// swift-tools-version:6.0
// nembridge: Hugging Face safetensors <-> Megatron-Core torch_dist checkpoints, as planned byte moves.
// Dependencies point one way: nembridge (CLI) -> NembridgeKit -> WeightMapping/Verification ->
// Execution -> formats (SafetensorsFormat, MegatronCheckpoint) -> TensorCore.
import PackageDescription

let package = Package(
    name: "nembridge",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "nembridge", targets: ["nembridge"]),
        .library(name: "NembridgeKit", targets: ["NembridgeKit"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.2.2"),
    ],
    targets: [
        // System libraries, found through pkg-config (Debian: libzstd-dev, libxxhash-dev).
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd", providers: [.apt(["libzstd-dev"])]),
        .systemLibrary(name: "CXXHash", pkgConfig: "libxxhash", providers: [.apt(["libxxhash-dev"])]),

        // The few platform calls Swift's Glibc module does not export.
        .target(name: "CPlatform"),

        // Shared vocabulary: dtypes, shapes, byte ranges, positional I/O, checksums.
        .target(
            name: "TensorCore",
            dependencies: [
                "CXXHash",
                "CPlatform",
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        // The safetensors format and the Hugging Face folder layout. Knows no architecture.
        .target(name: "SafetensorsFormat", dependencies: ["TensorCore"]),
        // Mapping tables (Mappings/*.yaml): lint, resolve a config, expand per layer, correspondences.
        // Imports no format: it plans over names, shapes and rows.
        .target(
            name: "WeightMapping",
            dependencies: ["TensorCore", .product(name: "Yams", package: "Yams")]
        ),
        // Stored ZIP archives inside byte ranges (torch.save zips in `.distcp` items): a reader that
        // uses only the end records and central directory, a streaming writer, CRC-32.
        .target(name: "TorchZip", dependencies: ["TensorCore", "CPlatform"]),
        // Pickle VM that executes nothing (read) and protocol 2 emitter (write), for DCP `.metadata`,
        // torch.save `data.pkl` and Megatron's common state.
        .target(name: "TorchPickle", dependencies: ["TensorCore"]),
        // Megatron-Core torch_dist checkpoints: DCP `.metadata`, `.distcp` items (torch.save zips,
        // optionally zstd), common state, the Megatron folder layout. Knows no architecture.
        .target(
            name: "MegatronCheckpoint",
            dependencies: ["TorchPickle", "TorchZip", "TensorCore", "CZstd"]
        ),
        // Comparing checkpoints byte for byte (or by value across dtypes) through plans; reports.
        .target(name: "Verification", dependencies: ["TensorCore"]),
        // Running plans: buffer pool, parallel positional I/O, atomic publish.
        .target(name: "Execution", dependencies: ["TensorCore"]),
        // Commands as library calls; the one place formats and mappings meet.
        .target(
            name: "NembridgeKit",
            dependencies: [
                "SafetensorsFormat", "MegatronCheckpoint", "TorchPickle", "TorchZip", "WeightMapping", "Verification",
                "Execution", "TensorCore",
            ]
        ),
        // The CLI only: argument parsing, progress display, exit codes.
        .executableTarget(
            name: "nembridge",
            dependencies: [
                "NembridgeKit", "Execution", "SafetensorsFormat", "WeightMapping", "TensorCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // Fixture lookup shared by the test targets.
        .target(name: "NembridgeTestSupport", path: "Tests/NembridgeTestSupport"),
        .testTarget(name: "TensorCoreTests", dependencies: ["TensorCore"]),
        .testTarget(
            name: "SafetensorsFormatTests",
            dependencies: ["SafetensorsFormat", "TensorCore", "NembridgeTestSupport"]
        ),
        .testTarget(
            name: "WeightMappingTests", dependencies: ["WeightMapping", "SafetensorsFormat", "TensorCore", "NembridgeTestSupport"],
            exclude: ["Golden"]  // read from the checkout (TestCheckpoints.root), not bundled: a golden update rewrites them there
        ),
        .testTarget(name: "TorchZipTests", dependencies: ["TorchZip", "TensorCore", "NembridgeTestSupport"]),
        .testTarget(
            name: "MegatronCheckpointTests",
            dependencies: ["MegatronCheckpoint", "TorchPickle", "TorchZip", "TensorCore", "NembridgeTestSupport"]
        ),
        .testTarget(name: "TorchPickleTests", dependencies: ["TorchPickle", "TensorCore", "NembridgeTestSupport"]),
        .testTarget(name: "VerificationTests", dependencies: ["Verification", "TensorCore", "NembridgeTestSupport"]),
        .testTarget(name: "ExecutionTests", dependencies: ["Execution", "TensorCore", "NembridgeTestSupport"]),
        .testTarget(
            name: "NembridgeKitTests",
            dependencies: [
                "NembridgeKit", "SafetensorsFormat", "MegatronCheckpoint", "TorchPickle", "TorchZip", "WeightMapping", "Execution", "Verification",
                "TensorCore", "NembridgeTestSupport",
            ],
            exclude: ["Golden"]
        ),
        // Runs the built binary: exit codes, messages, help.
        .testTarget(name: "nembridgeTests", dependencies: ["nembridge", "NembridgeTestSupport"]),
    ],
    swiftLanguageModes: [.v6]
)
