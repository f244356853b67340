// Conversions between fp32 and the 16-bit formats, element by element, shared by the
// element-wise kernels and the packing GEMM's rounded output (which must give the same bits
// as rounding its fp32 result afterwards). Loops over them vectorise.
#ifndef TESSERA_ROUNDING_H
#define TESSERA_ROUNDING_H
#include <stdint.h>
#include <string.h>

static inline float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// bf16 rounding (to nearest even, NaN kept quiet) and widening.
static inline uint16_t round_bf16(float f) {
    uint32_t b = float_to_bits(f);
    uint32_t nan = (b & 0x7fffffffu) > 0x7f800000u;
    return (uint16_t)(nan ? ((b >> 16) | 0x40u) : ((b + 0x7fffu + ((b >> 16) & 1u)) >> 16));
}
static inline float widen_bf16(uint16_t h) { return bits_to_float((uint32_t)h << 16); }

// IEEE binary16 through the compiler's _Float16 (F16C where the target has it).
static inline uint16_t round_f16(float f) { _Float16 h = (_Float16)f; uint16_t u; memcpy(&u, &h, 2); return u; }
static inline float widen_f16(uint16_t u) { _Float16 h; memcpy(&h, &u, 2); return (float)h; }

#endif
