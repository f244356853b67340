// MARK: - Model shapes

/// A GPT configuration as the calculator sees it (mirrors the trainer's model flags).
public struct ModelShape: Codable, Equatable, Sendable {
    public var nLayer: Int, nHead: Int, nEmbd: Int, blockSize: Int, vocabSize: Int, bias: Bool

    public init(nLayer: Int, nHead: Int, nEmbd: Int, blockSize: Int, vocabSize: Int, bias: Bool = true) {
        self.nLayer = nLayer; self.nHead = nHead; self.nEmbd = nEmbd
        self.blockSize = blockSize; self.vocabSize = vocabSize; self.bias = bias
    }

    /// Exact parameter count of tessera's GPT (tied LM head):
    /// (V + T)·C + L·(12C² + 13C) + 2C with biases, (V + T)·C + L·(12C² + 2C) + C without.
    public var params: Int {
        let C = nEmbd, L = nLayer
        return bias ? (vocabSize + blockSize) * C + L * (12 * C * C + 13 * C) + 2 * C
                    : (vocabSize + blockSize) * C + L * (12 * C * C + 2 * C) + C
    }

    /// Named shapes: the benchmark configurations and the GPT-2 family.
    public static let presets: [String: ModelShape] = [
        "tiny": ModelShape(nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 64, vocabSize: 65, bias: false),
        "small": ModelShape(nLayer: 6, nHead: 6, nEmbd: 384, blockSize: 256, vocabSize: 65, bias: false),
        "gpt2": ModelShape(nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257),
        "gpt2-medium": ModelShape(nLayer: 24, nHead: 16, nEmbd: 1024, blockSize: 1024, vocabSize: 50257),
        "gpt2-large": ModelShape(nLayer: 36, nHead: 20, nEmbd: 1280, blockSize: 1024, vocabSize: 50257),
        "gpt2-xl": ModelShape(nLayer: 48, nHead: 25, nEmbd: 1600, blockSize: 1024, vocabSize: 50257),
    ]

    /// A configuration near `target` parameters with conventional proportions: heads of 64,
    /// width a multiple of 64, and width/depth between 32 and 128 (Kaplan et al. find loss
    /// flat over a wide range of aspect ratios; GPT-2/3 sit at 64–128). Among those, the
    /// closest count wins, ties broken towards aspect 64.
    public static func near(params target: Double, vocabSize: Int = 50257, blockSize: Int = 1024) throws(ScalingError) -> ModelShape {
        try ScalingError.positive(target, "--params")
        var best: (shape: ModelShape, err: Double, aspect: Double)?
        for L in 1...160 {
            for heads in 1...200 {
                let C = 64 * heads
                let aspect = Double(C) / Double(L)
                guard aspect >= 32, aspect <= 128 else { continue }
                let s = ModelShape(nLayer: L, nHead: heads, nEmbd: C, blockSize: blockSize, vocabSize: vocabSize)
                let err = abs(Double(s.params) - target) / target
                let aspectGap = abs(log(aspect / 64))
                if best == nil || err < best!.err - 1e-9 || (abs(err - best!.err) <= 1e-9 && aspectGap < best!.aspect) {
                    best = (s, err, aspectGap)
                }
            }
        }
        guard let b = best, b.err < 0.5 else {
            throw ScalingError("--params", "\(target) has no conventional GPT shape",
                               "pass at least ~1e6 and at most ~1e13 parameters")
        }
        return b.shape
    }

    /// A preset name, or a JSON file with the trainer's config keys (RUN/config.json).
    public static func parse(_ spec: String, vocabSize: Int?, readFile: (String) -> [UInt8]?) throws(ScalingError) -> ModelShape {
        if var p = presets[spec] {
            if let v = vocabSize { p.vocabSize = v }
            return p
        }
        guard let bytes = readFile(spec) else {
            throw ScalingError("--model", "'\(spec)' is neither a preset nor a readable file",
                               "use one of \(presets.keys.sorted().joined(separator: ", ")) or a run's config.json")
        }
        func int(_ key: String) -> Int? { JSONLite.number(key, in: bytes).map { Int($0) } }
        guard let L = int("nLayer"), let H = int("nHead"), let C = int("nEmbd"), let T = int("blockSize") else {
            throw ScalingError("--model", "file \(spec) lacks nLayer/nHead/nEmbd/blockSize", "pass a run's config.json")
        }
        let bias = JSONLite.bool("bias", in: bytes) ?? true
        return ModelShape(nLayer: L, nHead: H, nEmbd: C, blockSize: T, vocabSize: vocabSize ?? int("vocabSize") ?? 50257, bias: bias)
    }
}

/// Just enough JSON reading for flat config objects and metrics lines, so Scaling keeps no
/// dependency (not even Foundation).
enum JSONLite {
    static func value(_ key: String, in bytes: [UInt8]) -> Substring? {
        let needle = Array("\"\(key)\"".utf8)
        guard needle.count <= bytes.count,
              let at = (0...(bytes.count - needle.count)).first(where: { bytes[$0..<($0 + needle.count)].elementsEqual(needle) })
        else { return nil }
        let text = String(decoding: bytes[(at + needle.count)...], as: UTF8.self)
        var rest = text[...].drop { $0 == " " || $0 == ":" || $0 == "\n" || $0 == "\t" }
        rest = rest.prefix { $0 != "," && $0 != "}" && $0 != "\n" }
        return Substring(rest.trimmingSpaces())
    }

    static func number(_ key: String, in bytes: [UInt8]) -> Double? { value(key, in: bytes).flatMap { Double($0) } }
    static func bool(_ key: String, in bytes: [UInt8]) -> Bool? {
        switch value(key, in: bytes) { case "true": return true; case "false": return false; default: return nil }
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var s = self
        while let f = s.first, f == " " { s = s.dropFirst() }
        while let l = s.last, l == " " { s = s.dropLast() }
        return s
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
