import CKernels
import Foundation

// MARK: - CPU

/// The instruction-set level element-wise kernels are compiled for; the widest the CPU runs
/// is chosen at start-up.
public enum ISA: Int, CaseIterable, Comparable, Sendable, CustomStringConvertible {
    /// Baseline x86-64 (SSE2).
    case generic
    /// AVX2 + FMA + F16C (AMD Zen 1–3, Intel Haswell onwards).
    case avx2
    /// AVX-512 F/BW/VL/DQ.
    case avx512
    /// AVX-512 with BF16 dot products (AMD Zen 4/5, Intel Cooper Lake, Sapphire Rapids).
    case avx512bf16

    public var description: String { ["generic", "avx2", "avx512", "avx512bf16"][rawValue] }
    public static func < (a: ISA, b: ISA) -> Bool { a.rawValue < b.rawValue }
}

/// What this machine's CPU is and which kernels run on it.
public enum CPU {
    /// The level the kernels use: the hardware's, lowered by `TESSERA_ISA=generic|avx2|avx512`.
    public static var isa: ISA { ISA(rawValue: Int(tessera_cpu_level())) ?? .generic }
    /// The widest level the CPU supports.
    public static var hardwareISA: ISA { ISA(rawValue: Int(tessera_cpu_hardware_level())) ?? .generic }

    /// Runs kernels at `level` (at most the hardware's) until the next call; nil restores the
    /// start-up choice. For tests that check every level on one machine.
    public static func use(_ level: ISA?) { tessera_set_cpu_level(Int32(level?.rawValue ?? -1)) }

    /// Every level this CPU can run, lowest first.
    public static var runnableLevels: [ISA] { ISA.allCases.filter { $0 <= hardwareISA } }

    /// "AuthenticAMD family 25 model 17 (AMD EPYC 9B14)" from /proc/cpuinfo ("unknown CPU" elsewhere).
    public static let model: String = {
        guard let text = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8) else { return "unknown CPU" }
        var fields: [String: String] = [:]
        for line in text.split(separator: "\n") {
            if line.isEmpty { break }
            let parts = line.split(separator: ":", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            if parts.count == 2, fields[parts[0]] == nil { fields[parts[0]] = parts[1] }
        }
        let id = "\(fields["vendor_id"] ?? "?") family \(fields["cpu family"] ?? "?") model \(fields["model"] ?? "?")"
        return fields["model name"].map { "\(id) (\($0))" } ?? id
    }()
}
