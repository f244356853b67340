// MARK: - AlignedBuffer

/// A fixed-size, 64-byte-aligned, zero-initialised array of plain values that owns its memory.
///
/// Hot loops take `pointer` directly: going through a Swift array stored in a class costs an
/// exclusivity check per access, which dominates element-wise kernels.
public final class AlignedBuffer<Element: BitwiseCopyable>: @unchecked Sendable {
    /// Number of elements.
    public let count: Int
    /// Start of the storage; valid for `count` elements for the buffer's lifetime.
    public let pointer: UnsafeMutablePointer<Element>

    /// Allocates `count` zeroed elements.
    public init(count: Int) {
        precondition(count >= 0, "buffer count must be non-negative")
        self.count = count
        let n = max(count, 1), bytes = n * MemoryLayout<Element>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        pointer = raw.bindMemory(to: Element.self, capacity: n)
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

    /// Bytes held by the storage.
    public var byteCount: Int { count * MemoryLayout<Element>.stride }

    /// Sets every byte to zero.
    public func zero() { UnsafeMutableRawPointer(pointer).initializeMemory(as: UInt8.self, repeating: 0, count: byteCount) }

    /// A copy of the contents as a Swift array (for tests and serialisation, not hot paths).
    public func toArray() -> [Element] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// Overwrites the contents from `values`, which must have exactly `count` elements.
    public func copy(from values: [Element]) {
        precondition(values.count == count, "copy(from:) size mismatch: \(values.count) vs \(count)")
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: count) }
    }

    /// Subscript for tests and setup code; hot loops should use `pointer`.
    public subscript(i: Int) -> Element {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}

/// fp32 values.
public typealias FloatBuffer = AlignedBuffer<Float>
/// 16-bit values (bf16 or fp16 bit patterns).
public typealias HalfBuffer = AlignedBuffer<UInt16>
