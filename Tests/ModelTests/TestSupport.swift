import Kernels
import Model
import Settings
import XCTest

/// A model plus owned parameter/gradient buffers for tests.
final class Harness {
    let model: GPT
    let params: FloatBuffer
    let grads: FloatBuffer
    let flat: FlatParameters

    init(_ config: GPTConfig, precision: Precision = .fp32) {
        model = GPT(config: config, precision: precision)
        params = FloatBuffer(count: model.layout.count)
        grads = FloatBuffer(count: model.layout.count)
        flat = FlatParameters(layout: model.layout, parameters: params.pointer, gradients: grads.pointer)
    }

    /// Mean loss over counted positions.
    func loss(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int) -> Double {
        let r = tokens.withUnsafeBufferPointer { tk in
            targets.withUnsafeBufferPointer { tg in
                model.forward(tokens: tk.baseAddress!, targets: tg.baseAddress!, B: B, T: T, params: flat)
            }
        }
        return r.sum / Double(r.count)
    }

    /// Loss and gradients of the mean loss (gradients overwritten).
    func lossAndGradients(_ tokens: [Int32], _ targets: [Int32], B: Int, T: Int) -> Double {
        grads.zero()
        let r = tokens.withUnsafeBufferPointer { tk in
            targets.withUnsafeBufferPointer { tg in
                model.forward(tokens: tk.baseAddress!, targets: tg.baseAddress!, B: B, T: T, params: flat)
            }
        }
        model.backward(lossScale: Float(1.0 / Double(r.count)), params: flat)
        return r.sum / Double(r.count)
    }
}

/// ‖a − b‖∞ / ‖b‖∞ (with a floor so all-zero references compare absolutely).
func relativeError(_ a: [Float], _ b: [Double]) -> Double {
    precondition(a.count == b.count)
    var diff = 0.0, scale = 1e-12
    for i in 0..<a.count {
        diff = max(diff, abs(Double(a[i]) - b[i]))
        scale = max(scale, abs(b[i]))
    }
    return diff / scale
}

/// Runs `body` with the element-wise kernels at each level this CPU supports (generic, AVX2,
/// AVX-512 …, as `TESSERA_ISA` forces them), then restores the start-up level.
func atEveryISA(_ body: (ISA) throws -> Void) rethrows {
    defer { CPU.use(nil) }
    for level in CPU.runnableLevels {
        CPU.use(level)
        precondition(CPU.isa == level)
        try body(level)
    }
}

/// An analytic gradient element against a central difference: 1% relative where either is
/// above 1e-3, else 2e-5 absolute (float32 noise of the difference quotient).
func assertGradient(_ analytic: Double, _ numeric: Double, _ label: @autoclosure () -> String,
                    file: StaticString = #filePath, line: UInt = #line) {
    let scale = max(abs(analytic), abs(numeric))
    if scale > 1e-3 {
        XCTAssertLessThan(abs(analytic - numeric) / scale, 1e-2, "\(label()): analytic \(analytic) numeric \(numeric)", file: file, line: line)
    } else {
        XCTAssertLessThan(abs(analytic - numeric), 2e-5, "\(label()): analytic \(analytic) numeric \(numeric)", file: file, line: line)
    }
}

/// Checks element `i` of `values` (whose analytic gradient is `analytic`) against the central
/// difference of `loss` with the element moved by ±1e-2.
func checkElement(_ values: FloatBuffer, _ i: Int, analytic: Float, _ label: @autoclosure () -> String,
                  loss: () -> Double, file: StaticString = #filePath, line: UInt = #line) {
    let saved = values[i], eps: Float = 1e-2
    values[i] = saved + eps
    let up = loss()
    values[i] = saved - eps
    let down = loss()
    values[i] = saved
    assertGradient(Double(analytic), (up - down) / Double(2 * eps), label(), file: file, line: line)
}
