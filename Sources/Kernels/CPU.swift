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
    /// AVX-512 with BF16 dot products (AMD Zen 4/5, Intel Cooper Lake).
    case avx512bf16
    /// That and AMX-BF16 tiles, where oneDNN's bf16 matmul runs on them (Intel Sapphire Rapids
    /// and later): bf16 products then all run on the tiles, which outrun tessera's AVX512-BF16
    /// kernels several times over: GEMMs on oneDNN's, attention's blocks on tessera's AMX
    /// kernel (see `Gemm.bf16OnAMX`).
    case amx

    /// The name `TESSERA_ISA` takes for it (the C side's list, which parses the variable).
    public var description: String { String(cString: tessera_isa_level_name(Int32(rawValue))) }
    public static func < (a: ISA, b: ISA) -> Bool { a.rawValue < b.rawValue }
}

/// What this machine's CPU is and which kernels run on it.
public enum CPU {
    /// The level the kernels use: the hardware's, lowered by
    /// `TESSERA_ISA=generic|avx2|avx512|avx512bf16`.
    public static var isa: ISA { ISA(rawValue: Int(tessera_cpu_level())) ?? .generic }
    /// Why `TESSERA_ISA` cannot be honoured (a name that is not a level), or nil.
    public static var requestedLevelError: String? {
        guard let raw = getenv("TESSERA_ISA") else { return nil }
        let name = String(cString: raw)
        if tessera_isa_level_named(name) >= 0 { return nil }
        return "error: TESSERA_ISA=\(name) is not a kernel level: use one of "
            + ISA.allCases.map(\.description).joined(separator: ", ") + " (or unset it for this CPU's widest, \(hardwareISA))"
    }

    /// The widest level the CPU supports (AMX only where oneDNN can use it too).
    public static var hardwareISA: ISA { ISA(rawValue: Int(tessera_cpu_usable_level())) ?? .generic }

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
