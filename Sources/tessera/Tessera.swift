import ArgumentParser
import Training

/// The `tessera` command line: a thin layer that parses, validates and calls the modules.
@main
struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Distributed GPT training on CPU clusters over MPI.",
        subcommands: [Prepare.self, Train.self, Generate.self, Ckpt.self, Export.self, Scaling.self, Bench.self])

    /// Stop signals are held from program load for `train` (which checkpoints and exits 75
    /// when one arrives); every other command gets the usual behaviour back.
    static func main() {
        if CommandLine.arguments.dropFirst().first != "train" { Preemption.restoreDefault() }
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch {
            exit(withError: error)
        }
    }
}
