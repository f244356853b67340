import Foundation

// MARK: - Byte-level BPE

/// A byte-level BPE vocabulary (GPT-2's, or one `BPETrainer` learned) and its encoder.
///
/// Text is cut into pieces by `PreTokenizer`; each piece starts as its bytes and the adjacent
/// pair with the lowest merge rank is merged until none is left, exactly as tiktoken and
/// Hugging Face `tokenizers` do. Special tokens (`<|endoftext|>`) are never produced from
/// text: documents are separated by inserting their id.
public final class BytePairEncoder: Sendable {
    /// Bytes of each token id (a special token's are its text).
    public let tokens: [[UInt8]]
    /// Merges in rank order, as pairs of token ids.
    public let merges: [(Int, Int)]
    /// Special tokens by text.
    public let specials: [String: Int]
    /// Id of each single byte.
    let byteIds: [UInt32]
    /// (left, right) → rank << 32 | merged id.
    let pairs: PairTable

    /// Number of ids.
    public var vocabSize: Int { tokens.count }
    /// `<|endoftext|>`'s id, when the vocabulary has it.
    public var endOfText: Int? { specials[Self.endOfTextText] }
    /// GPT-2's document separator.
    public static let endOfTextText = "<|endoftext|>"

    /// Builds an encoder from token bytes, merges and specials; the caller has checked them.
    init(tokens: [[UInt8]], merges: [(Int, Int)], specials: [String: Int], byteIds: [UInt32]) {
        self.tokens = tokens; self.merges = merges; self.specials = specials; self.byteIds = byteIds
        var table = PairTable(capacity: merges.count)
        var idOf: [[UInt8]: Int] = [:]
        for (id, t) in tokens.enumerated() where !specials.values.contains(id) { idOf[t] = id }
        for (rank, (a, b)) in merges.enumerated() {
            table.insert(a, b, rank: rank, merged: idOf[tokens[a] + tokens[b]]!)
        }
        pairs = table
    }

    // MARK: Loading

    /// Loads a vocabulary (`encoder.json` / `vocab.json`: token spelling → id) and its merges
    /// (`vocab.bpe` / `merges.txt`: one "left right" per line, in rank order).
    public static func load(vocab vocabPath: String, merges mergesPath: String) throws(DataError) -> BytePairEncoder {
        guard let vocabData = FileManager.default.contents(atPath: vocabPath) else {
            throw DataError.missing(path: vocabPath, fix: "pass GPT-2's encoder.json or a vocab.json with --vocab")
        }
        guard let mergesData = FileManager.default.contents(atPath: mergesPath) else {
            throw DataError.missing(path: mergesPath, fix: "pass GPT-2's vocab.bpe or a merges.txt with --merges")
        }
        guard let object = try? JSONSerialization.jsonObject(with: vocabData), let spellings = object as? [String: Any] else {
            throw DataError.invalid(path: vocabPath, problem: "not a JSON object of token → id", fix: "pass encoder.json or vocab.json")
        }
        var vocab: [String: Int] = [:]
        for (s, v) in spellings {
            guard let n = v as? NSNumber, n.intValue >= 0 else {
                throw DataError.invalid(path: vocabPath, problem: "token \(s.debugDescription) has id \(v), not a non-negative integer",
                                        fix: "pass encoder.json or vocab.json")
            }
            vocab[s] = n.intValue
        }
        let lines = String(decoding: mergesData, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false)
        var mergeSpellings: [(Int, Substring, Substring)] = []
        for (i, line) in lines.enumerated() {
            if line.hasPrefix("#version") || line.isEmpty { continue }
            let parts = line.split(separator: " ", omittingEmptySubsequences: false)
            guard parts.count == 2, !parts[0].isEmpty, !parts[1].isEmpty else {
                throw DataError.invalid(path: mergesPath, problem: "line \(i + 1) is not two tokens separated by one space",
                                        fix: "pass vocab.bpe or merges.txt")
            }
            mergeSpellings.append((i + 1, parts[0], parts[1]))
        }
        return try make(vocab: vocab, merges: mergeSpellings, vocabPath: vocabPath, mergesPath: mergesPath)
    }

    /// Checks that vocabulary and merges agree and builds the encoder.
    static func make(vocab: [String: Int], merges: [(line: Int, left: Substring, right: Substring)],
                     vocabPath: String, mergesPath: String) throws(DataError) -> BytePairEncoder {
        let count = vocab.count
        var tokens = [[UInt8]?](repeating: nil, count: count)
        var specials: [String: Int] = [:]
        for (s, id) in vocab {
            guard id < count, tokens[id] == nil else {
                throw DataError.invalid(path: vocabPath, problem: "ids are not 0..<\(count) each once (\(s.debugDescription) → \(id))",
                                        fix: "pass an unmodified encoder.json or vocab.json")
            }
            if s.hasPrefix("<|"), s.hasSuffix("|>") { specials[s] = id; tokens[id] = Array(s.utf8); continue }
            guard let bytes = ByteLevel.bytes(of: s) else {
                throw DataError.invalid(path: vocabPath, problem: "token \(s.debugDescription) is not byte-level text",
                                        fix: "pass a byte-level BPE vocabulary (GPT-2's encoder.json or a vocab.json for it)")
            }
            tokens[id] = bytes
        }
        var idOf: [[UInt8]: Int] = [:]
        for (id, t) in tokens.enumerated() where !specials.values.contains(id) { idOf[t!] = id }
        var byteIds = [UInt32](repeating: 0, count: 256)
        for b in 0..<256 {
            guard let id = idOf[[UInt8(b)]] else {
                throw DataError.invalid(path: vocabPath, problem: "byte 0x\(String(b, radix: 16)) has no token",
                                        fix: "a byte-level vocabulary holds all 256 bytes")
            }
            byteIds[b] = UInt32(id)
        }
        var pairs: [(Int, Int)] = []
        pairs.reserveCapacity(merges.count)
        for m in merges {
            guard let l = ByteLevel.bytes(of: String(m.left)), let r = ByteLevel.bytes(of: String(m.right)),
                  let a = idOf[l], let b = idOf[r] else {
                throw DataError.invalid(path: mergesPath, problem: "line \(m.line) merges \(m.left) and \(m.right), but \(vocabPath) lacks one of them",
                                        fix: "pass the vocab and merges files of the same tokenizer")
            }
            guard idOf[l + r] != nil else {
                throw DataError.invalid(path: mergesPath, problem: "line \(m.line) merges \(m.left) and \(m.right), but \(vocabPath) has no token \(m.left)\(m.right)",
                                        fix: "pass the vocab and merges files of the same tokenizer")
            }
            pairs.append((a, b))
        }
        return BytePairEncoder(tokens: tokens.map { $0! }, merges: pairs, specials: specials, byteIds: byteIds)
    }

    // MARK: Writing (Hugging Face's vocab.json + merges.txt)

    /// `vocab.json`: spelling → id, keys sorted.
    public func vocabJSON() -> Data {
        var dict: [String: Int] = [:]
        for (id, t) in tokens.enumerated() { dict[specialText(id) ?? ByteLevel.spell(t)] = id }
        return (try? JSONSerialization.data(withJSONObject: dict, options: [.sortedKeys])) ?? Data()
    }

    /// `merges.txt`: a version line, then one merge per line in rank order.
    public func mergesText() -> String {
        var s = "#version: 0.2\n"
        for (a, b) in merges { s += ByteLevel.spell(tokens[a]) + " " + ByteLevel.spell(tokens[b]) + "\n" }
        return s
    }

    private func specialText(_ id: Int) -> String? { specials.first { $0.value == id }?.key }

    // MARK: Encoding

    /// Appends the ids of `text` (valid UTF-8) to `out`.
    public func encode(_ text: UnsafeBufferPointer<UInt8>, into out: inout [UInt32], session: EncoderSession) {
        guard let base = text.baseAddress else { return }
        PreTokenizer.split(text) { lo, hi in
            encodePiece(base + lo, hi - lo, into: &out, session: session)
        }
    }

    /// Ids of a string (convenience for prompts and tests).
    public func encode(_ text: String) -> [Int] {
        var s = text
        var out: [UInt32] = []
        let session = EncoderSession()
        s.withUTF8 { encode($0, into: &out, session: session) }
        return out.map(Int.init)
    }

    /// Text of ids; ids outside the vocabulary are skipped, invalid UTF-8 becomes U+FFFD.
    public func decode(_ ids: [Int]) -> String {
        var bytes: [UInt8] = []
        for id in ids where id >= 0 && id < tokens.count { bytes += tokens[id] }
        return String(decoding: bytes, as: UTF8.self)
    }

    @inline(__always)
    private func encodePiece(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [UInt32], session: EncoderSession) {
        if n == 1 { out.append(byteIds[Int(p[0])]); return }
        if n <= EncoderSession.cachedLength, let hit = session.lookup(p, n) {
            out.append(contentsOf: hit); return
        }
        let start = out.count
        merge(p, n, into: &out, session: session)
        if n <= EncoderSession.cachedLength { session.store(p, n, out[start...]) }
    }

    /// Merges one piece: the lowest-ranked adjacent pair first, leftmost on ties (tiktoken's
    /// loop), keeping each pair's rank so a merge re-ranks only its two neighbours.
    private func merge(_ p: UnsafePointer<UInt8>, _ n: Int, into out: inout [UInt32], session: EncoderSession) {
        session.ids.removeAll(keepingCapacity: true)
        session.ranks.removeAll(keepingCapacity: true)
        for i in 0..<n { session.ids.append(byteIds[Int(p[i])]) }
        for i in 0..<(n - 1) { session.ranks.append(pairs.lookup(session.ids[i], session.ids[i + 1])) }
        session.ids.withUnsafeMutableBufferPointer { ids in
            session.ranks.withUnsafeMutableBufferPointer { ranks in
                var count = n
                while count > 1 {
                    var best = UInt64.max, at = -1
                    for i in 0..<(count - 1) where ranks[i] < best { best = ranks[i]; at = i }
                    if at < 0 { break }
                    ids[at] = UInt32(truncatingIfNeeded: best)
                    // Remove ids[at + 1] and ranks[at] (the merged pair).
                    for i in (at + 1)..<(count - 1) { ids[i] = ids[i + 1] }
                    for i in at..<(count - 2) { ranks[i] = ranks[i + 1] }
                    count -= 1
                    if at > 0 { ranks[at - 1] = pairs.lookup(ids[at - 1], ids[at]) }
                    if at < count - 1 { ranks[at] = pairs.lookup(ids[at], ids[at + 1]) }
                }
                out.append(contentsOf: ids[0..<count])
            }
        }
    }
}

// MARK: - Pair table

/// Open-addressing map from a pair of ids to (rank << 32 | merged id); absent pairs give
/// `UInt64.max`, which sorts after every rank.
struct PairTable: Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private let mask: Int

    init(capacity: Int) {
        var size = 16
        while size < capacity * 2 { size <<= 1 }
        keys = [UInt64](repeating: .max, count: size)
        values = [UInt64](repeating: .max, count: size)
        mask = size - 1
    }

    @inline(__always) private static func slot(_ key: UInt64, _ mask: Int) -> Int {
        Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask
    }

    mutating func insert(_ a: Int, _ b: Int, rank: Int, merged: Int) {
        let key = UInt64(a) << 32 | UInt64(b)
        var i = Self.slot(key, mask)
        while keys[i] != .max && keys[i] != key { i = (i + 1) & mask }
        if keys[i] == key { return }   // a repeated merge keeps its first (lowest) rank
        keys[i] = key
        values[i] = UInt64(rank) << 32 | UInt64(merged)
    }

    @inline(__always) func lookup(_ a: UInt32, _ b: UInt32) -> UInt64 {
        let key = UInt64(a) << 32 | UInt64(b)
        return keys.withUnsafeBufferPointer { k in
            var i = Self.slot(key, mask)
            while true {
                let found = k[i]
                if found == key { return values[i] }
                if found == .max { return .max }
                i = (i + 1) & mask
            }
        }
    }
}

// MARK: - Per-thread encoding state

/// Scratch and a cache of recently encoded pieces; one per encoding thread.
///
/// Pieces up to 16 bytes (nearly all words) are keyed by their bytes packed into two words
/// plus length, so a hit costs one hash probe and no byte comparison.
public final class EncoderSession {
    static let cachedLength = 15
    private static let capacity = 1 << 18
    private var keyLo = [UInt64](repeating: 0, count: capacity)
    private var keyHi = [UInt64](repeating: 0, count: capacity)   // 0 = empty (length is never 0)
    private var span = [UInt64](repeating: 0, count: capacity)    // arena offset << 8 | count
    private var arena: [UInt32] = []
    private var used = 0
    var ids: [UInt32] = []
    var ranks: [UInt64] = []

    public init() { arena.reserveCapacity(1 << 20) }

    @inline(__always) private func key(_ p: UnsafePointer<UInt8>, _ n: Int) -> (UInt64, UInt64) {
        var lo: UInt64 = 0, hi = UInt64(n) << 56
        for i in 0..<min(n, 8) { lo |= UInt64(p[i]) << (8 * UInt64(i)) }
        if n > 8 { for i in 8..<n { hi |= UInt64(p[i]) << (8 * UInt64(i - 8)) } }
        return (lo, hi)
    }

    @inline(__always) private func slot(_ lo: UInt64, _ hi: UInt64) -> Int {
        Int(truncatingIfNeeded: ((lo ^ (hi &* 0xC2B2_AE3D_27D4_EB4F)) &* 0x9E37_79B9_7F4A_7C15) >> 40) & (Self.capacity - 1)
    }

    func lookup(_ p: UnsafePointer<UInt8>, _ n: Int) -> ArraySlice<UInt32>? {
        let (lo, hi) = key(p, n)
        var i = slot(lo, hi)
        while keyHi[i] != 0 {
            if keyHi[i] == hi && keyLo[i] == lo {
                let s = span[i], start = Int(s >> 8)
                return arena[start..<(start + Int(s & 0xFF))]
            }
            i = (i + 1) & (Self.capacity - 1)
        }
        return nil
    }

    func store(_ p: UnsafePointer<UInt8>, _ n: Int, _ value: ArraySlice<UInt32>) {
        if used >= Self.capacity / 2 || arena.count > 1 << 22 {   // full: start over
            for i in 0..<Self.capacity { keyHi[i] = 0 }
            arena.removeAll(keepingCapacity: true); used = 0
        }
        let (lo, hi) = key(p, n)
        var i = slot(lo, hi)
        while keyHi[i] != 0 { i = (i + 1) & (Self.capacity - 1) }
        keyLo[i] = lo; keyHi[i] = hi
        span[i] = UInt64(arena.count) << 8 | UInt64(value.count)
        arena.append(contentsOf: value)
        used += 1
    }
}
