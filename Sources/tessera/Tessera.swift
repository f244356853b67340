import ArgumentParser

/// The `tessera` command line: a thin layer that parses, validates and calls the modules.
@main
struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Distributed GPT training on CPU clusters over MPI.",
        subcommands: [Prepare.self, Train.self, Generate.self, Ckpt.self, Export.self, Scaling.self, Bench.self])
}
