import ArgumentParser
import Foundation
import Comm
import Kernels
import Training

/// The `tessera` command line: a thin layer that parses, validates and calls the modules.
@main
struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Distributed GPT training on CPU clusters over MPI.",
        subcommands: [Prepare.self, Train.self, Eval.self, PlotRuns.self, Generate.self, Import.self, Ckpt.self, Export.self, Scaling.self, Bench.self])

    /// `train` holds stop signals from the very start (it checkpoints and exits 75 when one
    /// arrives); every other command keeps the usual behaviour.
    static func main() {
        if CommandLine.arguments.dropFirst().first == "train" { Preemption.install() }
        // A misspelt override would otherwise be ignored and the run measured on other code.
        for problem in [CPU.requestedLevelError, Gemm.forcedBackendError].compactMap({ $0 }) {
            writeStandardError(problem)
            Foundation.exit(2)
        }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
