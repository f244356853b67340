import Foundation

// MARK: - Reading documents in bounded pieces

/// One piece of a document's text: valid UTF-8, cut where a pre-tokenizer piece is certain
/// to start, so pieces encode independently and in parallel to the same ids as the whole.
public struct TextPiece: Sendable {
    /// Index of the document over all inputs.
    public var document: Int
    /// Whether this piece begins its document.
    public var startsDocument: Bool
    /// The text.
    public var bytes: [UInt8]
}

/// How an input file is read.
public enum InputFormat: String, Sendable, CaseIterable {
    /// By extension: `.jsonl` is JSON Lines, anything else (and stdin) plain text.
    case auto
    /// Plain text: a file is one document, or several cut by `--split-on`.
    case txt
    /// One JSON object per line, its text under `--text-field`.
    case jsonl
    /// One example per JSON line, a prompt and a completion: packed rows with a loss mask
    /// that counts only completions (`InstructionData`).
    case promptCompletion = "prompt-completion"
}

/// Streams the documents of files, directories and stdin as pieces of bounded size: memory
/// stays at a few pieces whatever the size of a file or a document.
public struct DocumentReader {
    /// Files and directories to read, in order (`-` is stdin).
    public let inputs: [String]
    public var format: InputFormat = .auto
    public var textField = "text"
    /// Cuts plain-text files into documents where it matches (the match itself is dropped).
    public var splitOn: NSRegularExpression?
    /// Target piece size in bytes.
    public var pieceBytes = 1 << 20

    public init(inputs: [String]) { self.inputs = inputs }

    /// The files the inputs name, directories expanded to their `.txt`/`.jsonl` files, sorted.
    public func files() throws(DataError) -> [String] {
        var out: [String] = []
        for input in inputs {
            if input == "-" { out.append(input); continue }
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: input, isDirectory: &isDir) else {
                throw DataError.missing(path: input, fix: "pass existing text files or directories to --input")
            }
            if !isDir.boolValue { out.append(input); continue }
            let found = (FileManager.default.enumerator(atPath: input)?.compactMap { $0 as? String } ?? [])
                .filter { $0.hasSuffix(".txt") || $0.hasSuffix(".jsonl") }.sorted().map { input + "/" + $0 }
            guard !found.isEmpty else {
                throw DataError.missing(path: input, fix: "the directory has no .txt or .jsonl files; pass files or another directory")
            }
            out += found
        }
        return out
    }

    /// Calls `body` with each piece of every document, in order.
    public func forEachPiece(_ body: (TextPiece) throws(DataError) -> Void) throws(DataError) {
        var document = 0
        for file in try files() {
            let jsonl = format == .jsonl || (format == .auto && file.hasSuffix(".jsonl"))
            guard let handle = file == "-" ? FileHandle.standardInput : FileHandle(forReadingAtPath: file) else {
                throw DataError.missing(path: file, fix: "make the file readable")
            }
            defer { if file != "-" { try? handle.close() } }
            if jsonl {
                try readLines(handle, file: file, document: &document, body)
            } else {
                try readText(handle, file: file, document: &document, body)
            }
        }
    }

    // MARK: Plain text

    private func readText(_ handle: FileHandle, file: String, document: inout Int,
                          _ body: (TextPiece) throws(DataError) -> Void) throws(DataError) {
        var pending: [UInt8] = []
        var eof = false, hasContent = false
        func part(_ text: some Collection<UInt8>) throws(DataError) {
            guard !text.isEmpty else { return }
            try body(TextPiece(document: document, startsDocument: !hasContent, bytes: Array(text)))
            hasContent = true
        }
        func emit(_ text: [UInt8]) throws(DataError) {
            guard let splitOn else { try part(text); return }
            // Each separator ends the current document; empty documents are skipped.
            let s = String(decoding: text, as: UTF8.self), ns = s as NSString
            var from = 0
            for m in splitOn.matches(in: s, range: NSRange(location: 0, length: ns.length)) {
                try part(ns.substring(with: NSRange(location: from, length: m.range.location - from)).utf8)
                if hasContent { document += 1; hasContent = false }
                from = m.range.location + m.range.length
            }
            try part(ns.substring(from: from).utf8)
        }
        while !eof || !pending.isEmpty {
            if !eof && pending.count < pieceBytes {
                let more = (try? handle.read(upToCount: pieceBytes)) ?? nil
                if let more, !more.isEmpty { pending += more } else { eof = true }
                continue
            }
            // Cut at the last safe place in the piece; a piece with none grows up to 64×, then
            // is cut at a character boundary (text with no line break in 64 MiB).
            var cut = pending.count
            if !eof {
                let found = pending.withUnsafeBufferPointer { PreTokenizer.safeCut($0, below: $0.count, above: 0) }
                if let found, found > 0 {
                    cut = found
                } else if pending.count < 64 * pieceBytes {
                    let more = (try? handle.read(upToCount: pieceBytes)) ?? nil
                    if let more, !more.isEmpty { pending += more } else { eof = true }
                    continue
                } else {
                    cut = pending.count
                    while cut > 0 && pending[cut - 1] & 0xC0 == 0x80 { cut -= 1 }
                    if cut > 0 && pending[cut - 1] >= 0xC0 { cut -= 1 }
                }
            }
            let text = Array(String(decoding: pending[..<cut], as: UTF8.self).utf8)   // invalid bytes → U+FFFD
            pending.removeFirst(cut)
            try emit(text)
        }
        if hasContent { document += 1 }
    }

    // MARK: JSON Lines

    private func readLines(_ handle: FileHandle, file: String, document: inout Int,
                           _ body: (TextPiece) throws(DataError) -> Void) throws(DataError) {
        var pending: [UInt8] = []
        var line = 0, eof = false, scanFrom = 0
        while true {
            let newline = pending[scanFrom...].firstIndex(of: 0x0A)
            if newline == nil && !eof {
                scanFrom = pending.count
                let more = (try? handle.read(upToCount: pieceBytes)) ?? nil
                if let more, !more.isEmpty { pending += more } else { eof = true }
                continue
            }
            let end = newline ?? pending.count
            line += 1
            let raw = pending[..<end]
            if !raw.allSatisfy({ $0 == 0x20 || $0 == 0x09 || $0 == 0x0D }) {
                guard let object = try? JSONSerialization.jsonObject(with: Data(raw)) as? [String: Any] else {
                    throw DataError.invalid(path: "\(file):\(line)", problem: "line \(line) is not a JSON object",
                                            fix: "fix or remove that line (each line of a .jsonl file is one JSON object)")
                }
                guard let text = object[textField] as? String else {
                    throw DataError.invalid(path: "\(file):\(line)", problem: "line \(line) has no string field \"\(textField)\"",
                                            fix: "name the text field with --text-field")
                }
                try emitDocument(Array(text.utf8), document: document, body)
                document += 1
            }
            if newline == nil { break }
            pending.removeFirst(end + 1)
            scanFrom = 0
        }
    }

    /// A document held in memory (one JSON line), in pieces cut at safe places.
    private func emitDocument(_ text: [UInt8], document: Int, _ body: (TextPiece) throws(DataError) -> Void) throws(DataError) {
        var lo = 0, starts = true
        repeat {
            var hi = text.count
            if text.count - lo > pieceBytes {
                hi = text.withUnsafeBufferPointer { PreTokenizer.safeCut($0, below: lo + pieceBytes, above: lo) } ?? text.count
            }
            try body(TextPiece(document: document, startsDocument: starts, bytes: Array(text[lo..<hi])))
            starts = false; lo = hi
        } while lo < text.count
    }
}
