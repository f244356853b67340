import ArgumentParser
import Checkpoint
import Comm
import Foundation
import Training

/// `tessera ckpt`: look inside checkpoints.
struct Ckpt: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "ckpt", abstract: "Inspect or verify a checkpoint.",
                                                    subcommands: [Inspect.self, Verify.self])

    struct Inspect: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Tensors, shapes, sizes raw and compressed, and the ratio.")
        @Argument(help: "A checkpoint directory, a run directory or RUN/checkpoints.") var path: String

        func run() throws {
            do {
                let (dir, m) = try CheckpointStore(runDirectory: path).resolve(path) { writeStandardError($0) }
                print("checkpoint \(dir.path)")
                print("format \(m.formatVersion), step \(m.step), world size \(m.worldSize), ZeRO \(m.zeroStage), \(m.precision), zstd level \(m.compressionLevel)")
                let raw = 3 * 4 * m.parameterCount, stored = m.files.reduce(0) { $0 + $1.bytes }
                print(String(format: "state: %d parameters × (params, adam.m, adam.v); %.2f MB raw, %.2f MB stored, ratio %.3f",
                             m.parameterCount, Double(raw) / 1e6, Double(stored) / 1e6, Double(stored) / Double(raw)))
                print("files:")
                for f in m.files {
                    let frames = f.frames.map { String(format: "%@ %.3f", $0.vector, Double($0.length) / Double(4 * max($0.count, 1))) }
                    print("  \(f.file)  \(f.bytes) bytes  crc32 \(String(format: "%08x", f.crc32))  [\(frames.joined(separator: ", "))]")
                }
                print("tensors:")
                for t in m.tensors { print("  \(t.name)  \(t.shape)  \(t.dtype)  offset \(t.offset)") }
            } catch { fail(error) }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Check every file's size and CRC-32 against the manifest.")
        @Argument(help: "A checkpoint directory, a run directory or RUN/checkpoints.") var path: String
        @Flag(help: "Every committed checkpoint of the run, not only the one `latest` names (before archiving or copying a run).")
        var all = false

        func run() throws {
            if all { return try verifyAll() }
            do {
                var dir = URL(fileURLWithPath: path)
                if !FileManager.default.fileExists(atPath: dir.appendingPathComponent("manifest.json").path) {
                    dir = try CheckpointStore(runDirectory: path).resolve(path) { writeStandardError($0) }.0
                }
                let m = try CheckpointReader.verify(directory: dir)
                if m.checksum == nil {
                    writeStandardError("warning: \(dir.path)/manifest.json is format \(m.formatVersion), written before manifests "
                                       + "carried their own checksum: its data files are verified, its values are not")
                }
                print("ok: \(dir.path): \(m.files.count) file(s), \(m.files.reduce(0) { $0 + $1.bytes }) bytes, "
                      + "manifest and file checksums match")
            } catch { fail(error) }
        }

        /// Each committed checkpoint in turn: a line for each, the failures' on stderr, and a
        /// non-zero exit if any failed (a damaged one is never passed over).
        func verifyAll() throws {
            let url = URL(fileURLWithPath: path).standardizedFileURL
            let run = url.lastPathComponent == "checkpoints" ? url.deletingLastPathComponent().path : url.path
            let dirs = CheckpointStore(runDirectory: run).committed().reversed()
            guard !dirs.isEmpty else {
                fail(CheckpointError(run, "directory holds no committed checkpoint", "pass a run directory (or RUN/checkpoints) that has one"))
            }
            var failed: [String] = []
            for dir in dirs {
                do {
                    let m = try CheckpointReader.verify(directory: dir)
                    say("ok: \(dir.lastPathComponent): \(m.files.count) file(s), \(m.files.reduce(0) { $0 + $1.bytes }) bytes"
                        + (m.checksum == nil ? " (format \(m.formatVersion): its manifest's values are unchecked)" : ""))
                } catch {
                    writeStandardError((error as? CheckpointError)?.description ?? "error: \(dir.path): \(error)")
                    failed.append(dir.lastPathComponent)
                }
            }
            guard failed.isEmpty else {
                fail(CheckpointError(run, "verification failed for \(failed.count) of \(dirs.count) checkpoints (\(failed.joined(separator: ", ")))",
                                     "resume from one that verified (--resume DIR), or copy the run again from its source"))
            }
            say("ok: all \(dirs.count) checkpoints of \(run) verify")
        }
    }
}

/// `tessera export`: weights for other tools.
struct Export: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Export weights as Hugging Face GPT-2 safetensors, or LoRA adapters in PEFT's format.")
    @Argument(help: "A checkpoint (or run) directory, or a model.bin.") var path: String
    @Option(help: "safetensors (a GPT2LMHeadModel directory) or peft (a LoRA run's adapters: adapter_config.json + adapter_model.safetensors).")
    var format: String = "safetensors"
    @Flag(help: "For a LoRA run: write the base with the adapters merged in (W + alpha/r · B·A) as GPT-2 safetensors.")
    var mergeLora = false
    @Option(help: "Output directory.") var out: String
    @Option(help: "f32 or bf16.") var dtype: String = "f32"

    func validate() throws {
        guard format == "safetensors" || format == "peft" else {
            throw ValidationError("--format must be safetensors or peft, got '\(format)'")
        }
        guard SafetensorsExport.DType(rawValue: dtype) != nil else { throw ValidationError("--dtype must be f32 or bf16") }
        guard !(mergeLora && format == "peft") else {
            throw ValidationError("--merge-lora writes GPT-2 safetensors: drop --format peft, or drop --merge-lora to write the adapters")
        }
    }

    func run() throws {
        do {
            let dtype = SafetensorsExport.DType(rawValue: self.dtype)!
            // Never over another model's files (a downloaded GPT-2, a run's own config.json).
            let files = format == "peft" ? ["adapter_model.safetensors", "adapter_config.json"] : ["model.safetensors", "config.json"]
            let present = files.filter { FileManager.default.fileExists(atPath: (out as NSString).appendingPathComponent($0)) }
            guard present.isEmpty else {
                throw ConfigError(flag: "--out", problem: "\(out) already holds \(present.joined(separator: " and "))",
                                  fix: "choose a new directory (or remove them first); nothing was overwritten")
            }
            let adapters = path.hasSuffix(".bin") ? nil : try LoRACheckpoint.read(path)
            if format == "peft" || mergeLora || adapters != nil {
                guard let adapters else {
                    throw ConfigError(flag: format == "peft" ? "--format peft" : "--merge-lora", problem: "needs a LoRA run, and \(path) trained the whole model",
                                      fix: "export it with --format safetensors (the default)")
                }
                if format == "peft" {
                    let names = try SafetensorsExport.writePEFT(adapters.lora, adapters: adapters.values.pointer, model: adapters.model,
                                                                base: adapters.run.initFrom, to: out, dtype: dtype)
                    print("exported \(names.count) adapter tensors (rank \(adapters.lora.rank), alpha \(adapters.lora.alpha)) to "
                          + "\(out)/adapter_model.safetensors and \(out)/adapter_config.json; base: \(adapters.run.initFrom)")
                    return
                }
                guard mergeLora else {
                    throw ConfigError(flag: "--format", problem: "safetensors of \(path), which holds LoRA adapters, needs a choice",
                                      fix: "pass --merge-lora (the base with the adapters merged in) or --format peft (the adapters alone)")
                }
                let names = try SafetensorsExport.write(try adapters.merged(checkpoint: path), to: out, dtype: dtype)
                print("exported \(names.count) tensors, LoRA merged, to \(out)/model.safetensors (\(dtype)) and \(out)/config.json")
                return
            }
            let model = path.hasSuffix(".bin") ? try ModelFile.read(from: path) : try ModelFile.fromCheckpoint(path)
            let names = try SafetensorsExport.write(model, to: out, dtype: dtype)
            print("exported \(names.count) tensors to \(out)/model.safetensors (\(dtype)) and \(out)/config.json")
        } catch { fail(error) }
    }
}
