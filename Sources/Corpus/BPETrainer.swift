import Foundation

// MARK: - Learning a byte-level BPE

/// Learns a byte-level BPE vocabulary from pre-tokenized words, as Hugging Face's
/// `BpeTrainer` does: start from the 256 bytes, repeatedly merge the most frequent adjacent
/// pair (ties: the smaller pair of ids, so the result is deterministic), until the vocabulary
/// has `vocabSize` ids including `<|endoftext|>`, which takes the last id.
public struct BPETrainer {
    /// Ids wanted, `<|endoftext|>` included.
    public let vocabSize: Int
    /// Distinct pre-tokenized words and their counts.
    private var counts: [[UInt8]: Int] = [:]

    /// Smallest useful vocabulary: the 256 bytes and the separator.
    public static let minimumVocab = 257

    public init(vocabSize: Int) { self.vocabSize = vocabSize }

    /// Counts the words of many texts on `threads` threads and adds them.
    public mutating func count(_ texts: [[UInt8]], threads: Int) {
        let parts = max(1, min(threads, texts.count))
        var partial = [[[UInt8]: Int]](repeating: [:], count: parts)
        partial.withUnsafeMutableBufferPointer { out in
            let out = UncheckedBox(out)
            DispatchQueue.concurrentPerform(iterations: parts) { t in
                var local: [[UInt8]: Int] = [:]
                for i in stride(from: t, to: texts.count, by: parts) {
                    texts[i].withUnsafeBufferPointer { buf in
                        PreTokenizer.split(buf) { lo, hi in local[Array(buf[lo..<hi]), default: 0] += 1 }
                    }
                }
                out.value[t] = local
            }
        }
        for p in partial { counts.merge(p, uniquingKeysWith: +) }
    }

    /// Learns the merges and returns the vocabulary.
    public func train() -> BytePairEncoder {
        var tokens: [[UInt8]] = (0..<256).map { [UInt8($0)] }
        var idOf: [[UInt8]: Int] = [:]
        for (i, t) in tokens.enumerated() { idOf[t] = i }
        var merges: [(Int, Int)] = []
        // Words in a fixed order (by bytes), as id sequences.
        let sortedWords = counts.keys.sorted { $0.lexicographicallyPrecedes($1) }
        var words = sortedWords.map { $0.map { Int32($0) } }
        let freq = sortedWords.map { counts[$0]! }
        var pairCount: [UInt64: Int] = [:]
        var where_: [UInt64: Set<Int32>] = [:]
        @inline(__always) func key(_ a: Int32, _ b: Int32) -> UInt64 { UInt64(UInt32(a)) << 32 | UInt64(UInt32(b)) }
        for (w, word) in words.enumerated() where word.count > 1 {
            for i in 0..<(word.count - 1) {
                let k = key(word[i], word[i + 1])
                pairCount[k, default: 0] += freq[w]
                where_[k, default: []].insert(Int32(w))
            }
        }
        var heap = PairHeap()
        for (k, c) in pairCount where c > 0 { heap.push(c, k) }
        while tokens.count < vocabSize - 1, let (c, k) = heap.pop() {
            let actual = pairCount[k] ?? 0
            if actual <= 0 { continue }
            if actual != c { continue }   // stale: the pair's current count has its own entry
            let a = Int32(truncatingIfNeeded: k >> 32), b = Int32(truncatingIfNeeded: k & 0xFFFF_FFFF)
            let merged = tokens[Int(a)] + tokens[Int(b)]
            let id: Int32
            if let existing = idOf[merged] { id = Int32(existing) } else {
                id = Int32(tokens.count); idOf[merged] = tokens.count; tokens.append(merged)
            }
            merges.append((Int(a), Int(b)))
            var touched = Set<UInt64>()
            for w in (where_[k] ?? []).sorted() {
                let wi = Int(w), f = freq[wi]
                var word = words[wi], i = 0
                var out: [Int32] = []
                out.reserveCapacity(word.count)
                // Remove the word's pairs, merge left to right, add its new pairs.
                for j in 0..<(word.count - 1) { let p = key(word[j], word[j + 1]); pairCount[p]! -= f; touched.insert(p) }
                while i < word.count {
                    if i + 1 < word.count && word[i] == a && word[i + 1] == b { out.append(id); i += 2 } else { out.append(word[i]); i += 1 }
                }
                word = out
                if word.count > 1 {
                    for j in 0..<(word.count - 1) {
                        let p = key(word[j], word[j + 1])
                        pairCount[p, default: 0] += f
                        where_[p, default: []].insert(w)
                        touched.insert(p)
                    }
                }
                words[wi] = word
            }
            pairCount[k] = 0
            where_[k] = nil
            // Every changed pair goes on the heap with its new count; older entries for it are
            // recognised as stale when popped.
            for p in touched.sorted() where (pairCount[p] ?? 0) > 0 { heap.push(pairCount[p]!, p) }
        }
        tokens.append(Array(BytePairEncoder.endOfTextText.utf8))
        let specials = [BytePairEncoder.endOfTextText: tokens.count - 1]
        return BytePairEncoder(tokens: tokens, merges: merges, specials: specials, byteIds: (0..<256).map { UInt32($0) })
    }
}

/// Max-heap of (count, pair), ties to the smaller pair key.
struct PairHeap {
    private var items: [(Int, UInt64)] = []

    @inline(__always) private static func above(_ x: (Int, UInt64), _ y: (Int, UInt64)) -> Bool {
        x.0 > y.0 || (x.0 == y.0 && x.1 < y.1)
    }

    mutating func push(_ count: Int, _ key: UInt64) {
        items.append((count, key))
        var i = items.count - 1
        while i > 0 {
            let parent = (i - 1) / 2
            if !Self.above(items[i], items[parent]) { break }
            items.swapAt(i, parent); i = parent
        }
    }

    mutating func pop() -> (Int, UInt64)? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if items.isEmpty { return top }
        items[0] = last
        var i = 0
        while true {
            let l = 2 * i + 1, r = l + 1
            var best = i
            if l < items.count && Self.above(items[l], items[best]) { best = l }
            if r < items.count && Self.above(items[r], items[best]) { best = r }
            if best == i { break }
            items.swapAt(i, best); i = best
        }
        return top
    }
}

/// Lets concurrent iterations write disjoint elements of one buffer.
struct UncheckedBox<T>: @unchecked Sendable { let value: T; init(_ v: T) { value = v } }
