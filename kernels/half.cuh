// Half-precision storage with float32 math inside (mixed precision, the chapter's
// float16 / bfloat16 activations).
//
// A kernel over a storage type T computes in acc_t<T>: float for f16 (__half) and bf16
// (__nv_bfloat16), T itself for float and double. It loads with to_acc (exact:
// every half value is a float), runs the per-element math of the other headers in
// float and rounds once on the store with from_acc<T> (round to nearest even; past
// the type's range gives +-inf, NaN stays NaN).
//
// On the device these are cuda_fp16.h / cuda_bf16.h's __half2float, __float2half_rn,
// __bfloat162float and __float2bfloat16_rn. The host compilation (CI, no GPU) has no
// CUDA headers, so there f16 and bf16 are 16-bit structs and the same conversions are
// written out on the bits; tests/backend compares them with NumPy's float16 and
// ml_dtypes' bfloat16.
#pragma once
#include "common.cuh"

#ifdef DLP_DEVICE_COMPILE
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dlp {

#ifdef DLP_DEVICE_COMPILE
typedef __half f16;
typedef __nv_bfloat16 bf16;
DLP_HOST_DEVICE float to_acc(f16 x) { return __half2float(x); }
DLP_HOST_DEVICE float to_acc(bf16 x) { return __bfloat162float(x); }
DLP_HOST_DEVICE f16 f16_from_float(float v) { return __float2half_rn(v); }
DLP_HOST_DEVICE bf16 bf16_from_float(float v) { return __float2bfloat16_rn(v); }
#else
struct f16 {
    unsigned short bits;
};
struct bf16 {
    unsigned short bits;
};

inline unsigned int float_bits(float v) {
    union { float f; unsigned int u; } c;
    c.f = v;
    return c.u;
}
inline float bits_float(unsigned int u) {
    union { unsigned int u; float f; } c;
    c.u = u;
    return c.f;
}

// IEEE binary16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
inline float to_acc(f16 x) {
    const unsigned int sign = (unsigned int)(x.bits & 0x8000u) << 16;
    const unsigned int e = (x.bits >> 10) & 0x1fu, m = x.bits & 0x3ffu;
    if (e == 0) {  // zero or subnormal: m * 2^-24, exact in float
        const float v = (float)m * bits_float(0x33800000u);
        return bits_float(float_bits(v) | sign);
    }
    if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));  // inf, NaN
    return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline f16 f16_from_float(float v) {
    unsigned int u = float_bits(v);
    const unsigned short sign = (unsigned short)((u >> 16) & 0x8000u);
    u &= 0x7fffffffu;
    f16 h;
    if (u > 0x7f800000u) {  // NaN: quiet, with the sign kept
        h.bits = (unsigned short)(sign | 0x7e00u);
    } else if (u >= 0x47800000u) {  // >= 65536 (and inf): inf
        h.bits = (unsigned short)(sign | 0x7c00u);
    } else if (u < 0x38800000u) {  // below 2^-14: a subnormal (or 0) in steps of 2^-24
        // adding 0.5 (2^-1) puts the step 2^-24 at float's last mantissa bit, so the
        // float addition rounds to nearest even exactly as the conversion must
        const float t = bits_float(u) + 0.5f;
        h.bits = (unsigned short)(sign | (float_bits(t) - 0x3f000000u));
    } else {  // normal: rebias the exponent, round the 13 dropped bits to nearest even
        const unsigned int odd = (u >> 13) & 1u;
        u += 0xc8000000u + 0xfffu + odd;  // exponent - 112 (mod 2^32), then round
        h.bits = (unsigned short)(sign | (u >> 13));  // a carry past 30 exponent gives inf
    }
    return h;
}

// bfloat16: the top 16 bits of a float.
inline float to_acc(bf16 x) { return bits_float((unsigned int)x.bits << 16); }

inline bf16 bf16_from_float(float v) {
    const unsigned int u = float_bits(v);
    bf16 b;
    if ((u & 0x7fffffffu) > 0x7f800000u) {
        b.bits = (unsigned short)((u >> 16) | 0x0040u);  // NaN: quiet, sign kept
    } else {
        b.bits = (unsigned short)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
    }
    return b;
}
#endif

DLP_HOST_DEVICE float to_acc(float x) { return x; }
DLP_HOST_DEVICE double to_acc(double x) { return x; }

// The type the math runs in for storage type T.
template <typename T> struct Acc { typedef T type; };
template <> struct Acc<f16> { typedef float type; };
template <> struct Acc<bf16> { typedef float type; };
template <typename T> using acc_t = typename Acc<T>::type;

// The one rounding, on the store.
template <typename T> DLP_HOST_DEVICE T from_acc(acc_t<T> v) { return v; }
template <> DLP_HOST_DEVICE f16 from_acc<f16>(float v) { return f16_from_float(v); }
template <> DLP_HOST_DEVICE bf16 from_acc<bf16>(float v) { return bf16_from_float(v); }

}  // namespace dlp
