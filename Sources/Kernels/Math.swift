#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

// MARK: - libm wrappers
// Kept in one place so kernels read as plain math and the platform import lives here only.

@usableFromInline func Foundation_log(_ x: Double) -> Double { log(x) }
@usableFromInline func Foundation_cos(_ x: Double) -> Double { cos(x) }

/// exp for Float (libm expf).
@inlinable public func fexp(_ x: Float) -> Float { expf(x) }
/// tanh for Float (libm tanhf).
@inlinable public func ftanh(_ x: Float) -> Float { tanhf(x) }
/// Natural log for Float.
@inlinable public func flog(_ x: Float) -> Float { logf(x) }
