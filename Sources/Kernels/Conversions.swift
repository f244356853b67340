import CKernels
import Settings

// MARK: - Low-precision conversions
//
// Round-to-nearest-even from fp32; NaN stays NaN (quiet), ±inf stays ±inf, overflow of the
// target's range becomes ±inf, and subnormals are produced and read exactly.

/// Conversions between fp32 and the 16-bit formats.
public enum Convert {
    /// fp32 → bf16 bits, round to nearest even.
    @inlinable public static func bf16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        if x.isNaN { return UInt16(truncatingIfNeeded: b >> 16) | 0x0040 }   // keep sign, force quiet
        let lsb = (b >> 16) & 1
        let rounded = b &+ 0x7FFF &+ lsb
        return UInt16(truncatingIfNeeded: rounded >> 16)
    }

    /// bf16 bits → fp32 (exact).
    @inlinable public static func float(bf16 h: UInt16) -> Float { Float(bitPattern: UInt32(h) << 16) }

    /// fp32 → IEEE binary16 bits, round to nearest even; beyond 65504 (after rounding) → ±inf.
    @inlinable public static func fp16(_ x: Float) -> UInt16 {
        let b = x.bitPattern
        let sign = UInt16(truncatingIfNeeded: (b >> 16) & 0x8000)
        let exp = Int((b >> 23) & 0xFF)
        var mant = b & 0x7F_FFFF
        if exp == 0xFF { return sign | 0x7C00 | (mant != 0 ? 0x0200 : 0) }        // inf / NaN
        let e = exp - 127 + 15
        if e >= 0x1F { return sign | 0x7C00 }                                         // overflow
        if e <= 0 {
            // Subnormal half (or zero): shift the full significand into place, rounding.
            if e < -10 { return sign }
            mant |= 0x80_0000
            let shift = UInt32(14 - e)
            let half = UInt32(1) << (shift - 1)
            let rem = mant & ((UInt32(1) << shift) - 1)
            var r = mant >> shift
            if rem > half || (rem == half && (r & 1) != 0) { r += 1 }
            return sign | UInt16(r)
        }
        var r = UInt32(e) << 10 | (mant >> 13)
        let rem = mant & 0x1FFF
        if rem > 0x1000 || (rem == 0x1000 && (r & 1) != 0) { r += 1 }   // may carry into exponent → inf
        return sign | UInt16(r)
    }

    /// binary16 bits → fp32 (exact).
    @inlinable public static func float(fp16 h: UInt16) -> Float {
        let sign = UInt32(h & 0x8000) << 16
        let exp = UInt32((h >> 10) & 0x1F)
        let mant = UInt32(h & 0x3FF)
        if exp == 0 {
            if mant == 0 { return Float(bitPattern: sign) }
            // Subnormal: value = mant · 2^-24.
            let v = Float(mant) * Float(sign: .plus, exponent: -24, significand: 1)
            return sign != 0 ? -v : v
        }
        if exp == 0x1F { return Float(bitPattern: sign | 0x7F80_0000 | (mant << 13)) }
        return Float(bitPattern: sign | ((exp + 112) << 23) | (mant << 13))
    }
}

// MARK: - Array conversions

extension Precision {
    /// Rounds `n` floats to this 16-bit format, split over the rank's threads.
    @inlinable public func narrow(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, _ n: Int) {
        ParallelFor.chunks(n) { lo, hi in narrowSerial(src + lo, into: dst + lo, hi - lo) }
    }

    /// Widens `n` 16-bit values of this format to floats, split over the rank's threads.
    @inlinable public func widen(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, _ n: Int) {
        ParallelFor.chunks(n) { lo, hi in widenSerial(src + lo, into: dst + lo, hi - lo) }
    }

    /// `narrow` on the calling thread only (for callbacks that must not start threads, such as
    /// MPI's user-defined reductions).
    @inlinable public func narrowSerial(_ src: UnsafePointer<Float>, into dst: UnsafeMutablePointer<UInt16>, _ n: Int) {
        precondition(isLow, "fp32 has no 16-bit form")
        if self == .bf16 { tessera_f32_to_bf16(dst, src, Int64(n)) } else { tessera_f32_to_f16(dst, src, Int64(n)) }
    }

    /// `rows` runs of `cols` values `ld` apart widened to floats `dstLD` apart, on the calling
    /// thread (a strided block in one call).
    @inlinable public func widenRows(_ src: UnsafePointer<UInt16>, ld: Int, rows: Int, cols: Int,
                                     into dst: UnsafeMutablePointer<Float>, dstLD: Int) {
        precondition(isLow, "fp32 has no 16-bit form")
        tessera_widen_rows(self == .bf16 ? 1 : 0, dst, Int64(dstLD), src, Int64(ld), Int64(rows), Int64(cols))
    }

    /// `rows` runs of `cols` floats `ld` apart rounded to this format `dstLD` apart, on the
    /// calling thread (a strided block in one call).
    @inlinable public func narrowRows(_ src: UnsafePointer<Float>, ld: Int, rows: Int, cols: Int,
                                      into dst: UnsafeMutablePointer<UInt16>, dstLD: Int) {
        precondition(isLow, "fp32 has no 16-bit form")
        tessera_narrow_rows(self == .bf16 ? 1 : 0, dst, Int64(dstLD), src, Int64(ld), Int64(rows), Int64(cols))
    }

    /// `n` floats times `scale` (the fp32 product) rounded to this format, on the calling thread.
    @inlinable public func narrowScaled(_ src: UnsafePointer<Float>, by scale: Float, into dst: UnsafeMutablePointer<UInt16>,
                                        _ n: Int) {
        precondition(isLow, "fp32 has no 16-bit form")
        tessera_narrow_scaled(self == .bf16 ? 1 : 0, dst, src, Int64(n), scale)
    }

    /// `widen` on the calling thread only.
    @inlinable public func widenSerial(_ src: UnsafePointer<UInt16>, into dst: UnsafeMutablePointer<Float>, _ n: Int) {
        precondition(isLow, "fp32 has no 16-bit form")
        if self == .bf16 { tessera_bf16_to_f32(dst, src, Int64(n)) } else { tessera_f16_to_f32(dst, src, Int64(n)) }
    }
}
