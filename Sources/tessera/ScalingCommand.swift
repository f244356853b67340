import ArgumentParser

/// `tessera scaling`: sizing estimates before training.
struct Scaling: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Scaling-law calculator (compute-optimal sizes, FLOPs, memory).")
}
