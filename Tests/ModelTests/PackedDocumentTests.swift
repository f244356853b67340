import Kernels
import Model
import Settings
import XCTest

/// Packed examples (instruction data): with a document separator, each document in a row is
/// computed as if alone — attention stops at its start, positions restart — so packing changes
/// no example's logits or gradients; targets masked out (−1) change nothing.
final class PackedDocumentTests: XCTestCase {
    let sep: Int32 = 0

    /// A row of documents (each ending with the separator) padded with separators to `T`.
    func packed(_ documents: [[Int32]], T: Int) -> [Int32] {
        var row = documents.flatMap { $0 + [sep] }
        row += [Int32](repeating: sep, count: T - row.count)
        return row
    }

    func randomDocument(_ n: Int, _ rng: inout SplitMix64, vocab: Int) -> [Int32] {
        (0..<n).map { _ in Int32(1 + rng.next(below: vocab - 1)) }
    }

    /// Logits and the gradient of the summed loss of one row.
    func run(_ h: Harness, _ tokens: [Int32], _ targets: [Int32], separator: Int32?, precision: Precision = .fp32)
        -> (logits: [Float], grads: [Float]) {
        h.model.documentSeparator = separator
        h.grads.zero()
        let T = tokens.count
        _ = h.model.forward(tokens: tokens, targets: targets, B: 1, T: T, params: h.flat)
        h.model.backward(lossScale: 1, params: h.flat)
        let grads = h.grads.toArray()
        h.model.forward(tokens: tokens, targets: nil, B: 1, T: T, params: h.flat)
        let V = h.model.config.vocabSize
        let logits = (0..<T).flatMap { Array(UnsafeBufferPointer(start: h.model.logitsRow(b: 0, t: $0), count: V)) }
        return (logits, grads)
    }

    /// Across several 128-position attention blocks (documents straddle block boundaries), the
    /// packed row's logits at a document's positions are the document's own logits, and the
    /// packed gradient is the sum of the documents' gradients.
    func testPackedRowEqualsDocumentsAlone() {
        packedRowEqualsDocumentsAlone(.fp32, logitTolerance: 1e-5, gradientTolerance: 1e-5)
    }

    /// The same in bf16, within its rounding (documents alone meet other block boundaries):
    /// on a CPU with bf16 dot products this runs attention's bf16 path, where the last query
    /// block, whose first document starts after key block 0, skips that block and writes its
    /// dQ rows at the first key block it meets.
    func testPackedRowEqualsDocumentsAloneInBF16() {
        packedRowEqualsDocumentsAlone(.bf16, logitTolerance: 0.02, gradientTolerance: 1e-3)
    }

    func packedRowEqualsDocumentsAlone(_ precision: Precision, logitTolerance: Float, gradientTolerance: Float) {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 320, vocabSize: 11)
        let h = Harness(config, precision: precision)
        GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 3)
        var rng = SplitMix64(seed: 8)
        for i in 0..<h.params.count { h.params[i] += Float(rng.nextNormal() * 0.2) }
        let docs = [150, 7, 100, 40].map { randomDocument($0, &rng, vocab: 11) }
        let T = 310
        let row = packed(docs, T: T)
        // Targets: the next token inside each document (its separator included), −1 elsewhere.
        var targets = [Int32](repeating: -1, count: T), at = 0
        for d in docs {
            for i in 0..<d.count { targets[at + i] = i + 1 < d.count ? d[i + 1] : sep }
            at += d.count + 1
        }
        let whole = run(h, row, targets, separator: sep)
        var sum = [Float](repeating: 0, count: h.params.count)
        at = 0
        var worstLogit: Float = 0
        for d in docs {
            let alone = run(h, d + [sep], Array(targets[at..<(at + d.count)]) + [-1], separator: sep)
            for i in 0..<sum.count { sum[i] += alone.grads[i] }
            let V = config.vocabSize
            for t in 0..<(d.count + 1) {
                for v in 0..<V { worstLogit = max(worstLogit, abs(whole.logits[(at + t) * V + v] - alone.logits[t * V + v])) }
            }
            at += d.count + 1
        }
        XCTAssertLessThan(worstLogit, logitTolerance, "a document's logits, packed vs alone")
        let scale = sum.map(abs).max()!
        let worst = zip(whole.grads, sum).map { abs($0 - $1) }.max()!
        XCTAssertLessThan(worst / scale, gradientTolerance, "packed gradient vs the sum of the documents' gradients")
        print("packed vs alone (\(precision)): worst logit \(worstLogit), worst gradient \(worst / scale) of the largest")
        // Without the separator the documents see each other: different logits.
        let mixed = run(h, row, targets, separator: nil)
        XCTAssertGreaterThan(zip(mixed.logits, whole.logits).map { abs($0 - $1) }.max()!, 100 * worstLogit)
    }

    /// Changing only targets that the loss mask leaves out (prompt positions) changes nothing:
    /// loss, count and every gradient are identical; the same change unmasked changes them.
    func testMaskedTargetsContributeNothing() {
        let config = GPTConfig(nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 40, vocabSize: 11)
        let h = Harness(config)
        GPT.initialize(h.params.pointer, layout: h.model.layout, config: config, seed: 5)
        var rng = SplitMix64(seed: 2)
        let prompt = randomDocument(12, &rng, vocab: 11), completion = randomDocument(9, &rng, vocab: 11)
        let row = packed([prompt + completion, prompt], T: 40)
        let next = Array(row.dropFirst()) + [sep]
        // The loss mask of `prepare --format prompt-completion`: completion and its separator.
        let counts = (0..<40).map { $0 >= prompt.count - 1 && $0 < prompt.count + completion.count }
        let masked = zip(next, counts).map { $1 ? $0 : -1 }
        var changed = next
        for t in 0..<40 where !counts[t] { changed[t] = (next[t] + 3) % 11 }   // other prompt targets
        let changedMasked = zip(changed, counts).map { $1 ? $0 : -1 }
        XCTAssertNotEqual(changed, next)
        XCTAssertEqual(changedMasked, masked)
        let a = run(h, row, masked, separator: sep), b = run(h, row, changedMasked, separator: sep)
        XCTAssertEqual(a.grads, b.grads, "identical gradients")
        let full = run(h, row, next, separator: sep), fullChanged = run(h, row, changed, separator: sep)
        XCTAssertNotEqual(full.grads, fullChanged.grads, "unmasked, the same change moves the gradients")
        XCTAssertNotEqual(a.grads, full.grads)
        XCTAssertEqual(a.grads.filter { $0 != 0 }.isEmpty, false)
    }
}
