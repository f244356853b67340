import Kernels
import Model
import Settings
import XCTest

final class LayoutTests: XCTestCase {
    /// GPT-2 small (124M) has 124,439,808 parameters with the tied head.
    func testGPT2SmallParameterCount() {
        let layout = ParameterLayout(GPTConfig(nLayer: 12, nHead: 12, nEmbd: 768, blockSize: 1024, vocabSize: 50257))
        XCTAssertEqual(layout.count, 124_439_808)
        XCTAssertEqual(layout.units.count, 14)
        XCTAssertEqual(layout.units.first!.lowerBound, 0)
        XCTAssertEqual(layout.units.last!.upperBound, layout.count)
        for (a, b) in zip(layout.units, layout.units.dropFirst()) { XCTAssertEqual(a.upperBound, b.lowerBound) }
    }

    /// Without biases: 12·L·C² + (V + T)·C + (2L + 1)·C.
    func testNoBiasCount() {
        let c = GPTConfig(nLayer: 4, nHead: 4, nEmbd: 128, blockSize: 64, vocabSize: 65, bias: false)
        XCTAssertEqual(ParameterLayout(c).count, 12 * 4 * 128 * 128 + (65 + 64) * 128 + 9 * 128)
    }

    func testInitialisationStatistics() {
        let c = GPTConfig(nLayer: 4, nHead: 4, nEmbd: 64, blockSize: 32, vocabSize: 50)
        let layout = ParameterLayout(c)
        let p = FloatBuffer(count: layout.count)
        GPT.initialize(p.pointer, layout: layout, config: c, seed: 3)
        func std(_ name: String) -> Double {
            let s = layout.tensor(named: name)!
            let v = (0..<s.count).map { Double(p[s.offset + $0]) }
            let mean = v.reduce(0, +) / Double(v.count)
            return (v.map { ($0 - mean) * ($0 - mean) }.reduce(0, +) / Double(v.count)).squareRoot()
        }
        XCTAssertEqual(std("h.0.mlp.c_fc.weight"), 0.02, accuracy: 0.001)
        XCTAssertEqual(std("h.1.mlp.c_proj.weight"), 0.02 / (8.0).squareRoot(), accuracy: 0.0005)
        XCTAssertEqual(p[layout.tensor(named: "ln_f.weight")!.offset], 1)
        XCTAssertEqual(p[layout.tensor(named: "h.0.attn.c_attn.bias")!.offset], 0)
        let q = FloatBuffer(count: layout.count)
        GPT.initialize(q.pointer, layout: layout, config: c, seed: 3)
        XCTAssertEqual(p.toArray(), q.toArray(), "same seed, same weights")
    }

    func testInvalidConfigsAreRejected() {
        XCTAssertThrowsError(try GPTConfig(nLayer: 2, nHead: 3, nEmbd: 16, blockSize: 8, vocabSize: 10).validate())
        XCTAssertThrowsError(try GPTConfig(nLayer: 0, nHead: 1, nEmbd: 16, blockSize: 8, vocabSize: 10).validate())
        XCTAssertThrowsError(try GPTConfig(nLayer: 1, nHead: 1, nEmbd: 16, blockSize: 8, vocabSize: 70_000).validate())
    }
}
