import ArgumentParser
import Corpus
import Settings

// MARK: - Typed arguments
// The settings types parse from the command line by their raw values, so a bad value is
// rejected by the parser with the list of valid ones.

extension Precision: ExpressibleByArgument {}
extension ZeroStage: ExpressibleByArgument {}
extension Recompute: ExpressibleByArgument {}
extension AttentionKernel: ExpressibleByArgument {}
extension GemmPolicy: ExpressibleByArgument {}
extension Sampling: ExpressibleByArgument {}
extension Tokenizer.Kind: ExpressibleByArgument {}
extension InputFormat: ExpressibleByArgument {}
extension SyncDType: ExpressibleByArgument {}
extension ShardGroup: ExpressibleByArgument {}
extension LRScheduleKind: ExpressibleByArgument {}
extension CooldownShape: ExpressibleByArgument {}
extension ChoiceRules: ExpressibleByArgument {}
