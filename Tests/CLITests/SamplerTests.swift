import Corpus
import Foundation
import Kernels
import Model
import Training
import XCTest

/// `generate`'s sampler: greedy decoding through the key/value cache, and past a full
/// `block_size` through full forwards of the cropped context, picks the tokens that
/// nanoGPT's loop (a full forward over the cropped context for every token) picks.
final class SamplerTests: XCTestCase {
    func testCachedGreedyDecodingEqualsFullForwards() throws {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 23)
        let params = randomWeights(config, seed: 4, noise: 1.5)
        let sampler = Sampler(file: ModelFile(config: config, tokenizer: nil, parameters: params))
        let prompt: [Int32] = [3, 1, 4, 1, 5]
        let new = 40   // 11 tokens fill the context; 29 more crop it
        let got = try sampler.generate(prompt: prompt.map(String.init).joined(separator: " "), maxNewTokens: new,
                                       options: .init(temperature: 0, topK: 0, topP: 1, seed: 1))

        let model = GPT(config: config), grads = FloatBuffer(count: 0)
        let flat = FlatParameters(layout: model.layout, parameters: params.pointer, gradients: grads.pointer)
        var ids = prompt, expected: [Int] = []
        for _ in 0..<new {
            let context = Array(ids.suffix(config.blockSize))
            model.forward(tokens: context, targets: nil, B: 1, T: context.count, params: flat)
            let logits = model.logitsRow(b: 0, t: context.count - 1)
            let best = (0..<config.vocabSize).max { logits[$0] < logits[$1] }!
            expected.append(best)
            ids.append(Int32(best))
        }
        XCTAssertEqual(got, expected.map(String.init).joined(separator: " "))
        XCTAssertGreaterThanOrEqual(Set(expected).count, 3, "a sequence that tells decoders apart")
    }

    /// Weights far from initialisation (a random model whose samples vary).
    func randomWeights(_ config: GPTConfig, seed: UInt64, noise: Double) -> FloatBuffer {
        let params = FloatBuffer(count: ParameterLayout(config).count)
        GPT.initialize(params.pointer, layout: ParameterLayout(config), config: config, seed: seed)
        var rng = SplitMix64(seed: seed &+ 2)
        for i in 0..<params.count { params[i] += Float(rng.nextNormal() * noise) }
        return params
    }

    /// Top-k's heap selection gives the k largest logits in the order a full sort gives.
    func testTopKSelectionIsTheSortedPrefix() {
        var rng = SplitMix64(seed: 11)
        for (V, k) in [(50257, 40), (1000, 1), (1000, 249), (97, 24), (97, 50)] {
            let logits = (0..<V).map { _ in Float(rng.nextNormal() * 3) }
            logits.withUnsafeBufferPointer { p in
                let full = Array(0..<V).sorted { p[$0] > p[$1] }
                XCTAssertEqual(Sampler.descending(p.baseAddress!, count: V, keep: k).prefix(k), full.prefix(k), "V \(V), k \(k)")
            }
        }
    }

    /// Drawing the stop token (`--stop-at-eot`'s `<|endoftext|>`) ends the sample there,
    /// without it: the tokens before its first draw.
    func testStopTokenEndsTheSample() throws {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 64, vocabSize: 23)
        let params = randomWeights(config, seed: 4, noise: 1.5)
        let sampler = Sampler(file: ModelFile(config: config, tokenizer: nil, parameters: params))
        let options = Sampler.Options(temperature: 1, topK: 0, topP: 1, seed: 7)
        let all = try sampler.generate(prompt: "3 1 4", maxNewTokens: 30, options: options).split(separator: " ").map(String.init)
        let stop = try XCTUnwrap(all.dropFirst(3).first { $0 != all[0] }, "a token to stop at")
        let first = all.firstIndex(of: stop)!
        let cut = try sampler.generate(prompt: "3 1 4", maxNewTokens: 30, options: options, stop: Int(stop)!)
        XCTAssertEqual(cut, all[..<first].joined(separator: " "), "stopped at the first \(stop), without it")
        XCTAssertGreaterThan(first, 0)
    }

    /// Samples drawn together are the samples drawn one at a time with seeds seed + k: while
    /// the context fits, past it (full forwards of several cropped contexts), and when some
    /// samples stop at the stop token early and ride along.
    func testSamplesDrawnTogetherAreTheSamplesDrawnAlone() throws {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 16, vocabSize: 23)
        let params = randomWeights(config, seed: 4, noise: 1.5)
        let sampler = Sampler(file: ModelFile(config: config, tokenizer: nil, parameters: params))
        for stop in [nil, 5] as [Int?] {
            let options = Sampler.Options(temperature: 1, topK: 0, topP: 1, seed: 21)
            let together = try sampler.generate(prompt: "3 1 4", samples: 6, maxNewTokens: 40, options: options, stop: stop)
            var alone: [String] = []
            for k in 0..<6 {
                var o = options
                o.seed = options.seed + UInt64(k)
                alone.append(try sampler.generate(prompt: "3 1 4", maxNewTokens: 40, options: o, stop: stop))
            }
            XCTAssertEqual(together, alone, "stop \(String(describing: stop))")
            // Past the context in passes of two contexts, and three, and one.
            for tokens in [32, 48, 16] {
                sampler.tokensPerPass = tokens
                XCTAssertEqual(try sampler.generate(prompt: "3 1 4", samples: 6, maxNewTokens: 40, options: options, stop: stop), alone,
                               "\(tokens / config.blockSize) context(s) per pass")
            }
            sampler.tokensPerPass = 2048
            XCTAssertEqual(Set(together).count, 6, "different samples")
            if stop != nil {
                let lengths = together.map { $0.split(separator: " ").count }
                // 13 new tokens fill the context: one stops before, riding along into the
                // full forwards the others need past it.
                XCTAssertTrue(lengths.contains { $0 < 13 } && lengths.contains { $0 > 13 }, "some stop early, others run on: \(lengths)")
            }
        }
    }

    /// `generate` writes text as it is generated; with byte tokens that end inside characters
    /// (a random byte-level model makes many, and invalid sequences too) what it has written
    /// in the end is exactly the prompt and the sample's text.
    func testStreamedTextIsTheSample() throws {
        let config = GPTConfig(nLayer: 1, nHead: 2, nEmbd: 16, blockSize: 32, vocabSize: 256)
        let params = randomWeights(config, seed: 2, noise: 0.5)
        let file = ModelFile(config: config, tokenizer: .byte, parameters: params)
        let path = try Repo.temporaryDirectory("stream") + "/model.bin"
        try file.write(to: path)
        let options = Sampler.Options(temperature: 1, topK: 0, topP: 1, seed: 9)
        let text = try Sampler(file: file).generate(prompt: "é", maxNewTokens: 120, options: options)
        XCTAssertTrue(text.unicodeScalars.contains { $0.value > 0x7F }, "the sample holds multi-byte or replaced characters")
        let r = try tessera(["generate", "--model", path, "--prompt", "é", "--max-new-tokens", "120", "--temperature", "1", "--seed", "9"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertEqual(Array(r.stdout.utf8), Array(("é" + text + "\n").utf8))
        // Several samples: drawn together by default, the same bytes as one at a time.
        let many = ["generate", "--model", path, "--prompt", "é", "--max-new-tokens", "60", "--temperature", "1", "--num-samples", "5"]
        let together = try tessera(many), apart = try tessera(many + ["--batch-size", "1"]), pairs = try tessera(many + ["--batch-size", "2"])
        XCTAssertEqual(together.status, 0, together.stderr)
        XCTAssertEqual(together.stdout, apart.stdout)
        XCTAssertEqual(pairs.stdout, apart.stdout)
        XCTAssertEqual(together.stdout.components(separatedBy: "---------------\n").count, 6)
        // Memory bounds the group: a sample's caches here are 2 × 1 layer × 32 × 16 floats
        // (4 KiB) and half of the limit holds them; too many asked for is refused.
        let bounded = try tessera(many + ["--memory-limit", "10K"])
        XCTAssertEqual(bounded.status, 0, bounded.stderr)
        XCTAssertTrue(bounded.stderr.contains("drawing 1 sample(s) at a time"), bounded.stderr)
        XCTAssertEqual(bounded.stdout, apart.stdout)
        let two = try tessera(many + ["--memory-limit", "16K"])
        XCTAssertTrue(two.stderr.contains("drawing 2 sample(s) at a time"), two.stderr)
        XCTAssertEqual(two.stdout, apart.stdout)
        let refused = try tessera(many + ["--memory-limit", "10K", "--batch-size", "3"])
        XCTAssertEqual(refused.status, 2)
        XCTAssertTrue(refused.stderr.contains("--batch-size is 3: their key/value caches need") && refused.stderr.contains("use --batch-size 1 or less"),
                      refused.stderr)
        XCTAssertTrue(refused.stdout.isEmpty, "refused before sampling")
        // A batch larger than the samples holds only theirs: 2 samples fit in 16K whatever the
        // batch asked for, 5 do not.
        let fewer = try tessera(Array(many.dropLast(2)) + ["--num-samples", "2", "--memory-limit", "16K", "--batch-size", "64"])
        XCTAssertEqual(fewer.status, 0, fewer.stderr)
        XCTAssertEqual(fewer.stdout.components(separatedBy: "---------------\n").count, 3)
        let more = try tessera(many + ["--memory-limit", "16K", "--batch-size", "64"])
        XCTAssertEqual(more.status, 2)
        XCTAssertTrue(more.stderr.contains("--batch-size is 64 (5 drawn together with --num-samples 5): their key/value caches need"),
                      more.stderr)
    }
}
