// swift-tools-version: 6.0
import PackageDescription

// Layering (see README "Architecture"): C shims -> Kernels -> Model, Comm -> Parallel, Optim
// -> Training, Checkpoint, Corpus -> tessera. Settings (Precision, ZeroStage) is the leaf
// every layer shares, and Tracing (profile spans) the leaf Model, Comm and Training record
// into; Scaling is pure math over Settings. Only Kernels imports CKernels; the
// signal shim is Training's, MPI is Comm's, zstd is Checkpoint's. Dependencies list exactly
// what each target imports.
let release: [SwiftSetting] = [.unsafeFlags(["-Ounchecked"], .when(configuration: .release))]

let package = Package(
    name: "tessera",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "tessera", targets: ["tessera"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
    ],
    targets: [
        // MARK: C shims
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CMPI", path: "Sources/CMPI", pkgConfig: "ompi-c",
                       providers: [.apt(["libopenmpi-dev"])]),
        .systemLibrary(name: "CZstd", path: "Sources/CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),
        .target(name: "CKernels", cSettings: [.unsafeFlags(["-O3", "-fno-math-errno"])],
                linkerSettings: [.linkedLibrary("dnnl"), .linkedLibrary("gomp")]),
        .target(name: "CSignals"),

        // MARK: Layers
        .target(name: "Settings"),
        .target(name: "Tracing", swiftSettings: release),
        .target(name: "Kernels", dependencies: ["CBLAS", "CKernels", "Settings"], swiftSettings: release),
        .target(name: "Model", dependencies: ["Kernels", "Settings", "Tracing"], swiftSettings: release),
        .target(name: "Comm", dependencies: ["CMPI", "Kernels", "Settings", "Tracing"], swiftSettings: release),
        .target(name: "Optim", dependencies: ["Kernels", "Settings"], swiftSettings: release),
        .target(name: "Parallel", dependencies: ["Comm", "Model", "Optim", "Kernels", "Settings"], swiftSettings: release),
        .target(name: "Corpus", dependencies: ["Kernels"], swiftSettings: release),
        .target(name: "Checkpoint", dependencies: ["CZstd", "Settings"], swiftSettings: release),
        .target(name: "Training", dependencies: ["CSignals", "Checkpoint", "Comm", "Corpus", "Kernels", "Model",
                                                 "Optim", "Parallel", "Scaling", "Settings", "Tracing"],
                swiftSettings: release),
        .target(name: "Scaling", dependencies: ["Settings"]),
        .executableTarget(name: "tessera", dependencies: [
            "Checkpoint", "Comm", "Corpus", "Kernels", "Optim", "Scaling", "Settings", "Training",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: release),

        // MARK: Tests
        .testTarget(name: "KernelsTests", dependencies: ["Kernels", "Settings"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Kernels", "Optim", "Settings"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "CorpusTests", dependencies: ["Corpus"], exclude: ["Fixtures"]),
        .testTarget(name: "OptimTests", dependencies: ["Optim", "Kernels", "Settings"]),
        .testTarget(name: "ParallelTests", dependencies: ["Parallel", "Comm", "Model", "Optim", "Kernels", "Settings"]),
        .testTarget(name: "ScalingTests", dependencies: ["Scaling", "Model", "Kernels", "Settings"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint"]),
        .testTarget(name: "TracingTests", dependencies: ["Tracing"]),
        .testTarget(name: "CLITests", dependencies: ["Checkpoint", "Comm", "Corpus", "Settings", "Training", "Model", "Kernels"], exclude: ["Fixtures"]),
    ]
)
