// MARK: - FloatBuffer

/// A fixed-size, 64-byte-aligned, zero-initialised array of `Float` that owns its memory.
///
/// Hot loops take `pointer` directly: going through a Swift array stored in a class costs an
/// exclusivity check per access, which dominates element-wise kernels.
public final class FloatBuffer: @unchecked Sendable {
    /// Number of elements.
    public let count: Int
    /// Start of the storage; valid for `count` elements for the buffer's lifetime.
    public let pointer: UnsafeMutablePointer<Float>

    /// Allocates `count` zeroed floats.
    public init(count: Int) {
        precondition(count >= 0, "FloatBuffer count must be non-negative")
        self.count = count
        let raw = UnsafeMutableRawPointer.allocate(byteCount: max(count, 1) * MemoryLayout<Float>.stride,
                                                   alignment: 64)
        pointer = raw.bindMemory(to: Float.self, capacity: max(count, 1))
        pointer.initialize(repeating: 0, count: max(count, 1))
    }

    deinit { UnsafeMutableRawPointer(pointer).deallocate() }

    /// Bytes held by the storage.
    public var byteCount: Int { count * MemoryLayout<Float>.stride }

    /// Sets every element to zero.
    public func zero() { pointer.update(repeating: 0, count: count) }

    /// A copy of the contents as a Swift array (for tests and serialisation, not hot paths).
    public func toArray() -> [Float] { Array(UnsafeBufferPointer(start: pointer, count: count)) }

    /// Overwrites the contents from `values`, which must have exactly `count` elements.
    public func copy(from values: [Float]) {
        precondition(values.count == count, "copy(from:) size mismatch: \(values.count) vs \(count)")
        values.withUnsafeBufferPointer { pointer.update(from: $0.baseAddress!, count: count) }
    }

    /// Subscript for tests and setup code; hot loops should use `pointer`.
    public subscript(i: Int) -> Float {
        get { pointer[i] }
        set { pointer[i] = newValue }
    }
}
