import ArgumentParser
import Foundation
import Training

/// `tessera plot`: loss curves of one or more runs as SVG (PNG through rsvg-convert).
struct PlotRuns: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "plot",
        abstract: "Plot train/val loss (by step and by tokens), learning rate and tokens/s of runs, overlaid.")

    @Argument(help: "Run directories (each with metrics.jsonl).") var runs: [String]
    @Option(help: "Output file: .svg, or .png (needs rsvg-convert: apt-get install librsvg2-bin). Default: FIRST_RUN/loss.svg.")
    var out: String?

    func validate() throws {
        guard !runs.isEmpty else { throw ValidationError("pass at least one run directory") }
        if let out, !(out.hasSuffix(".svg") || out.hasSuffix(".png")) {
            throw ValidationError("--out must end in .svg or .png, not '\(out)'")
        }
    }

    func run() throws {
        do {
            // Runs with the same directory name (runs/a/demo, runs/b/demo) are told apart by their path.
            let names = runs.map { URL(fileURLWithPath: $0).lastPathComponent }
            let loaded = try runs.enumerated().map { i, dir in
                try Plot.Run(directory: dir, name: names.filter { $0 == names[i] }.count > 1 ? dir : names[i])
            }
            let svg = Plot.svg(loaded)
            let target = out ?? (runs[0] as NSString).appendingPathComponent("loss.svg")
            if target.hasSuffix(".png") {
                let tool = ["/usr/bin/rsvg-convert", "/usr/local/bin/rsvg-convert"].first { FileManager.default.isExecutableFile(atPath: $0) }
                guard let tool else {
                    throw ConfigError(flag: "--out", problem: "PNG output needs rsvg-convert, which is not installed",
                                      fix: "apt-get install librsvg2-bin (make setup does), or write an .svg")
                }
                let temp = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-plot-\(getpid()).svg")
                try svg.write(to: temp, atomically: true, encoding: .utf8)
                defer { try? FileManager.default.removeItem(at: temp) }
                let p = Process()
                p.executableURL = URL(fileURLWithPath: tool)
                p.arguments = ["-o", target + ".partial", temp.path]
                try p.run(); p.waitUntilExit()
                guard p.terminationStatus == 0 else {
                    throw ConfigError(flag: "--out", problem: "rsvg-convert failed writing \(target)", fix: "check the path is writable")
                }
                // rename(2): the PNG appears whole or not at all.
                guard rename(target + ".partial", target) == 0 else {
                    throw ConfigError(flag: "--out", problem: "cannot write \(target)", fix: "choose a writable path")
                }
            } else {
                do { try svg.write(toFile: target, atomically: true, encoding: .utf8) } catch {
                    throw ConfigError(flag: "--out", problem: "cannot write \(target)", fix: "choose a writable path")
                }
            }
            print("plot of \(loaded.map { "\($0.name) (\($0.steps.count) steps)" }.joined(separator: ", ")) written to \(target)")
        } catch { fail(error) }
    }
}
