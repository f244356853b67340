import Corpus
import Foundation

// MARK: - Loss plots

/// An SVG of one or more runs' `metrics.jsonl`: train and validation loss against step and
/// against tokens seen, learning rate and throughput below, and multiple-choice accuracy
/// (`--eval-choices`) in a third row when a run has it; runs overlaid in their colours. A
/// mixture's validation loss per dataset (`val_loss_by_data`) adds a line per dataset to the
/// loss panels, in the run's colour with a dash of its own.
public enum Plot {
    /// What one run contributes: its name and, per step, the metrics line's values.
    public struct Run {
        public var name: String
        public var tokensPerStep: Int
        public var steps: [Int], loss: [Double], lr: [Double], tokensPerSecond: [Double]
        public var val: [(step: Int, loss: Double)]
        /// `--eval-choices`' accuracies at each evaluation (acc, acc_norm).
        public var choices: [(step: Int, acc: Double, accNorm: Double)]
        /// A mixture's datasets (by display name) and each one's validation loss.
        public var valByData: [(name: String, points: [(step: Int, loss: Double)])]

        /// Reads `RUN/metrics.jsonl` and the tokens per step from `RUN/config.json`.
        public init(directory: String, name: String? = nil) throws {
            self.name = name ?? URL(fileURLWithPath: directory).lastPathComponent
            let metricsPath = directory + "/metrics.jsonl"
            guard let text = try? String(contentsOfFile: metricsPath, encoding: .utf8) else {
                throw ConfigError(flag: "RUN", problem: "\(metricsPath) cannot be read", fix: "pass run directories written by tessera train")
            }
            var tokens = 0, mixture: MixtureSpec?
            if let d = FileManager.default.contents(atPath: directory + "/config.json"),
               let c = try? JSONDecoder().decode(TrainConfig.self, from: d) {
                tokens = c.batchSize * c.blockSize
                mixture = try? MixtureSpec.parse(c.data)
            }
            tokensPerStep = tokens
            steps = []; loss = []; lr = []; tokensPerSecond = []; val = []; choices = []
            var byData: [String: [(step: Int, loss: Double)]] = [:]
            for line in text.split(separator: "\n") {
                guard let m = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                      let step = m["step"] as? Int else { continue }
                let l = m["loss"] as? Double ?? .nan
                steps.append(step); loss.append(l)
                lr.append(m["lr"] as? Double ?? .nan)
                tokensPerSecond.append(m["tokens_per_s"] as? Double ?? .nan)
                if let v = m["val_loss"] as? Double { val.append((step, v)) }
                if let a = m["choice_acc"] as? Double, let n = m["choice_acc_norm"] as? Double { choices.append((step, a, n)) }
                for (path, v) in m["val_loss_by_data"] as? [String: Double] ?? [:] { byData[path, default: []].append((step, v)) }
            }
            // In the mixture's order, by its display names (paths the config does not list last).
            let paths = (mixture?.paths ?? []).filter { byData[$0] != nil } + byData.keys.filter { !(mixture?.paths ?? []).contains($0) }.sorted()
            let names = mixture.map { m in Dictionary(uniqueKeysWithValues: zip(m.paths, m.names)) } ?? [:]
            valByData = paths.map { (names[$0] ?? ($0 as NSString).lastPathComponent, byData[$0]!) }
            guard !steps.isEmpty else {
                throw ConfigError(flag: "RUN", problem: "\(metricsPath) has no steps", fix: "plot a run that has trained at least one step")
            }
        }
    }

    /// Colours of runs 1, 2, … (then repeating).
    static let palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"]

    /// The SVG document for `runs`.
    public static func svg(_ runs: [Run]) -> String {
        let width = 1000.0, panelH = 300.0, top = 70.0
        let rows = runs.contains { !$0.choices.isEmpty } ? 3.0 : 2.0
        var out = """
        <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(width))" height="\(Int(top + rows * panelH + 40))" \
        font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">
        <rect width="100%" height="100%" fill="white"/>
        <text x="20" y="26" font-size="17" font-weight="bold">Training: \(escape(runs.map(\.name).joined(separator: " vs ")))</text>

        """
        // Legend.
        var x = 20.0
        for (i, r) in runs.enumerated() {
            let c = palette[i % palette.count]
            out += "<line x1=\"\(x)\" y1=\"46\" x2=\"\(x + 24)\" y2=\"46\" stroke=\"\(c)\" stroke-width=\"2.5\"/>"
            out += "<text x=\"\(x + 30)\" y=\"50\">\(escape(r.name)) train</text>"
            x += 40 + Double(r.name.count + 6) * 7.2
            out += "<line x1=\"\(x)\" y1=\"46\" x2=\"\(x + 24)\" y2=\"46\" stroke=\"\(c)\" stroke-width=\"2\" stroke-dasharray=\"6 3\"/>"
            out += "<circle cx=\"\(x + 12)\" cy=\"46\" r=\"3.5\" fill=\"white\" stroke=\"\(c)\" stroke-width=\"2\"/>"
            out += "<text x=\"\(x + 30)\" y=\"50\">\(escape(r.name)) val</text>\n"
            x += 50 + Double(r.name.count + 4) * 7.2
            for (k, d) in r.valByData.enumerated() {
                out += "<line x1=\"\(x)\" y1=\"46\" x2=\"\(x + 24)\" y2=\"46\" stroke=\"\(c)\" stroke-width=\"1.5\" stroke-dasharray=\"\(dataDash(k))\"/>"
                out += "<text x=\"\(x + 30)\" y=\"50\">\(escape(r.name)) val \(escape(d.name))</text>\n"
                x += 50 + Double(r.name.count + d.name.count + 5) * 7.2
            }
        }
        let half = width / 2
        func lossSeries(_ byTokens: Bool) -> [Series] {
            runs.enumerated().flatMap { i, r -> [Series] in
                let scale = byTokens ? Double(max(r.tokensPerStep, 1)) : 1
                let c = palette[i % palette.count]
                let xs = r.steps.map { Double($0) * scale }
                return [Series(x: xs, y: r.loss, color: c, width: 1, opacity: 0.3),
                        Series(x: xs, y: smoothed(r.loss), color: c, width: 2, opacity: 1),
                        Series(x: r.val.map { Double($0.step) * scale }, y: r.val.map(\.loss), color: c, width: 2, opacity: 1,
                               dash: valDash, markers: true)]
                    + r.valByData.enumerated().map { k, d in
                        Series(x: d.points.map { Double($0.step) * scale }, y: d.points.map(\.loss), color: c, width: 1.5, opacity: 0.9,
                               dash: dataDash(k))
                    }
            }
        }
        let hasTokens = runs.allSatisfy { $0.tokensPerStep > 0 }
        out += panel(Frame(x: 0, y: top, w: half, h: panelH), title: "loss", xLabel: "step", series: lossSeries(false))
        out += panel(Frame(x: half, y: top, w: half, h: panelH), title: "loss",
                     xLabel: hasTokens ? "tokens" : "step (tokens per step unknown)", series: lossSeries(hasTokens))
        out += panel(Frame(x: 0, y: top + panelH, w: half, h: panelH), title: "learning rate", xLabel: "step",
                     series: runs.enumerated().map { Series(x: $1.steps.map(Double.init), y: $1.lr, color: palette[$0 % palette.count], width: 2, opacity: 1) })
        out += panel(Frame(x: half, y: top + panelH, w: half, h: panelH), title: "tokens/s", xLabel: "step",
                     series: runs.enumerated().map { Series(x: $1.steps.map(Double.init), y: $1.tokensPerSecond,
                                                            color: palette[$0 % palette.count], width: 1.5, opacity: 0.8) })
        if rows == 3 {
            // acc_norm solid, acc dashed, both with markers: evaluations are few.
            func accuracy(_ normalized: Bool) -> [Series] {
                runs.enumerated().map { i, r in
                    Series(x: r.choices.map { Double($0.step) }, y: r.choices.map { normalized ? $0.accNorm : $0.acc },
                           color: palette[i % palette.count], width: 2, opacity: 1, dash: normalized ? nil : valDash, markers: true)
                }
            }
            out += panel(Frame(x: 0, y: top + 2 * panelH, w: half, h: panelH), title: "multiple-choice acc_norm", xLabel: "step",
                         series: accuracy(true))
            out += panel(Frame(x: half, y: top + 2 * panelH, w: half, h: panelH), title: "multiple-choice acc", xLabel: "step",
                         series: accuracy(false))
        }
        return out + "</svg>\n"
    }

    // MARK: Drawing

    struct Frame { var x: Double, y: Double, w: Double, h: Double }

    struct Series {
        var x: [Double], y: [Double], color: String, width: Double, opacity: Double
        /// An SVG dash pattern (nil: solid).
        var dash: String? = nil
        var markers = false
    }

    /// The dash of validation loss and of multiple-choice acc (acc_norm is solid).
    static let valDash = "6 3"

    /// Dash patterns of a mixture's datasets, apart from `valDash`.
    static func dataDash(_ k: Int) -> String { ["2 3", "10 3 2 3", "1 2", "12 4"][k % 4] }

    /// TensorBoard's smoothing: an exponential moving average with weight 0.9, debiased at the start.
    static func smoothed(_ v: [Double], weight: Double = 0.9) -> [Double] {
        var last = 0.0, n = 0
        return v.map { x in
            guard x.isFinite else { return .nan }
            last = last * weight + (1 - weight) * x; n += 1
            return last / (1 - pow(weight, Double(n)))
        }
    }

    /// Round tick values covering lo…hi, about `count` of them (1, 2, 5 × 10ⁿ apart).
    static func ticks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
        guard hi > lo else { return [lo] }
        let raw = (hi - lo) / Double(count), mag = pow(10, floor(log10(raw)))
        let step = [1.0, 2, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? 10 * mag
        let first = ceil(lo / step) * step
        return stride(from: first, through: hi + step * 1e-9, by: step).map { $0 }
    }

    static func label(_ v: Double) -> String {
        let a = abs(v)
        if a == 0 { return "0" }
        if a >= 1e6 { return String(format: "%gM", v / 1e6) }
        if a >= 1e4 { return String(format: "%gk", v / 1e3) }
        if a < 1e-2 { return String(format: "%.0e", v) }
        return String(format: "%g", (v * 1e4).rounded() / 1e4)
    }

    static func panel(_ f: Frame, title: String, xLabel: String, series: [Series]) -> String {
        let left = f.x + 70, right = f.x + f.w - 20, top = f.y + 30, bottom = f.y + f.h - 50
        let xs = series.flatMap(\.x).filter(\.isFinite)
        let ys = series.flatMap(\.y).filter(\.isFinite)
        var s = "<text x=\"\(left)\" y=\"\(top - 10)\" font-size=\"14\" font-weight=\"bold\">\(escape(title))</text>\n"
        s += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(right - left)\" height=\"\(bottom - top)\" fill=\"none\" stroke=\"#999\"/>\n"
        guard let x0 = xs.min(), let x1 = xs.max(), var y0 = ys.min(), var y1 = ys.max() else { return s }
        if y1 - y0 < 1e-12 * max(1, abs(y1)) { y0 -= 0.5 * max(abs(y0), 1e-3); y1 += 0.5 * max(abs(y1), 1e-3) }
        let pad = (y1 - y0) * 0.05; y0 -= pad; y1 += pad
        let xr = x1 > x0 ? x1 - x0 : 1
        func px(_ v: Double) -> Double { left + (v - x0) / xr * (right - left) }
        func py(_ v: Double) -> Double { bottom - (v - y0) / (y1 - y0) * (bottom - top) }
        for t in ticks(x0, x1) {
            let p = px(t)
            s += "<line x1=\"\(p)\" y1=\"\(top)\" x2=\"\(p)\" y2=\"\(bottom)\" stroke=\"#eee\"/>"
            s += "<text x=\"\(p)\" y=\"\(bottom + 16)\" text-anchor=\"middle\">\(label(t))</text>\n"
        }
        for t in ticks(y0, y1) {
            let p = py(t)
            s += "<line x1=\"\(left)\" y1=\"\(p)\" x2=\"\(right)\" y2=\"\(p)\" stroke=\"#eee\"/>"
            s += "<text x=\"\(left - 6)\" y=\"\(p + 4)\" text-anchor=\"end\">\(label(t))</text>\n"
        }
        s += "<text x=\"\((left + right) / 2)\" y=\"\(bottom + 36)\" text-anchor=\"middle\">\(escape(xLabel))</text>\n"
        for line in series {
            let points = zip(line.x, line.y).filter { $0.0.isFinite && $0.1.isFinite }
                .map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }
            guard !points.isEmpty else { continue }
            s += "<polyline fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"\(line.width)\" stroke-opacity=\"\(line.opacity)\""
                + (line.dash.map { " stroke-dasharray=\"\($0)\"" } ?? "") + " points=\"\(points.joined(separator: " "))\"/>\n"
            if line.markers {
                for p in points {
                    let c = p.split(separator: ",")
                    s += "<circle cx=\"\(c[0])\" cy=\"\(c[1])\" r=\"3.5\" fill=\"white\" stroke=\"\(line.color)\" stroke-width=\"2\"/>"
                }
                s += "\n"
            }
        }
        return s
    }

    static func escape(_ t: String) -> String {
        t.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;").replacingOccurrences(of: ">", with: "&gt;")
            .replacingOccurrences(of: "\"", with: "&quot;")
    }
}
