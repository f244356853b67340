// swift-tools-version: 6.0
import PackageDescription

// Layering (see README "Architecture"): C shims -> Kernels -> Model, Comm -> Parallel, Optim
// -> Training, Data -> tessera. Scaling depends on nothing.
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

        // MARK: Layers
        .target(name: "Kernels", dependencies: ["CBLAS", "CKernels"], swiftSettings: release),
        .target(name: "Model", dependencies: ["Kernels"], swiftSettings: release),
        .target(name: "Comm", dependencies: ["CMPI", "CKernels"], swiftSettings: release),
        .target(name: "Optim", dependencies: ["Kernels", "CKernels"], swiftSettings: release),
        .target(name: "Parallel", dependencies: ["Comm", "Model", "Optim", "Kernels"], swiftSettings: release),
        .target(name: "Data", dependencies: ["Kernels"], swiftSettings: release),
        .target(name: "Checkpoint", dependencies: ["CZstd"], swiftSettings: release),
        .target(name: "Training", dependencies: ["Model", "Optim", "Data", "Comm", "Parallel", "Kernels", "Scaling",
                                                 "Checkpoint", "CKernels"],
                swiftSettings: release),
        .target(name: "Scaling"),
        .executableTarget(name: "tessera", dependencies: [
            "Parallel", "Checkpoint", "Optim",
            "Training", "Scaling", "Data", "Model", "Comm",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ], swiftSettings: release),

        // MARK: Tests
        .testTarget(name: "KernelsTests", dependencies: ["Kernels"]),
        .testTarget(name: "ModelTests", dependencies: ["Model", "Kernels", "Optim"],
                    resources: [.copy("Fixtures")]),
        .testTarget(name: "DataTests", dependencies: ["Data"]),
        .testTarget(name: "OptimTests", dependencies: ["Optim"]),
        .testTarget(name: "ScalingTests", dependencies: ["Scaling", "Model"]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint"]),
        .testTarget(name: "CLITests", dependencies: ["Checkpoint"]),
    ]
)
