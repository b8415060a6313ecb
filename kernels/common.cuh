// Shared definitions for dlprimer's CUDA kernels and their host twins.
//
// DLP_HOST_DEVICE marks the per-element math: `__host__ __device__` inline under
// NVCC/NVRTC, a plain `inline` otherwise (as PyTorch's C10_HOST_DEVICE), so the
// same functions compile for the GPU at run time and for the host in CI, where
// they are compared with the NumPy backend.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define DLP_DEVICE_COMPILE 1
#define DLP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define DLP_HOST_DEVICE inline
#include <math.h>
#endif

namespace dlp {

typedef unsigned long long u64;
typedef long long i64;

// Math wrappers: one overload per precision, so templates pick expf/exp etc.
DLP_HOST_DEVICE float exp_(float x) { return expf(x); }
DLP_HOST_DEVICE double exp_(double x) { return exp(x); }
DLP_HOST_DEVICE float expm1_(float x) { return expm1f(x); }
DLP_HOST_DEVICE double expm1_(double x) { return expm1(x); }
DLP_HOST_DEVICE float log_(float x) { return logf(x); }
DLP_HOST_DEVICE double log_(double x) { return log(x); }
DLP_HOST_DEVICE float erf_(float x) { return erff(x); }
DLP_HOST_DEVICE double erf_(double x) { return erf(x); }
DLP_HOST_DEVICE float tanh_(float x) { return tanhf(x); }
DLP_HOST_DEVICE double tanh_(double x) { return tanh(x); }
DLP_HOST_DEVICE float sqrt_(float x) { return sqrtf(x); }
DLP_HOST_DEVICE double sqrt_(double x) { return sqrt(x); }
DLP_HOST_DEVICE float fabs_(float x) { return fabsf(x); }
DLP_HOST_DEVICE double fabs_(double x) { return fabs(x); }
DLP_HOST_DEVICE float pow_(float x, float y) { return powf(x, y); }
DLP_HOST_DEVICE double pow_(double x, double y) { return pow(x, y); }

// max that propagates NaN (fmax would drop it), as NumPy's max does
template <typename T>
DLP_HOST_DEVICE T nan_max(T a, T b) { return (a > b || a != a) ? a : b; }

// A quiet NaN built from its bits (no <limits> under NVRTC); marks bad input
// without a device-side assert.
template <typename T> DLP_HOST_DEVICE T quiet_nan();
template <> DLP_HOST_DEVICE float quiet_nan<float>() {
    union { unsigned int u; float f; } v;
    v.u = 0x7fc00000u;
    return v.f;
}
template <> DLP_HOST_DEVICE double quiet_nan<double>() {
    union { u64 u; double f; } v;
    v.u = 0x7ff8000000000000ULL;
    return v.f;
}

// -inf from its bits, for the same reason
template <typename T> DLP_HOST_DEVICE T neg_inf();
template <> DLP_HOST_DEVICE float neg_inf<float>() {
    union { unsigned int u; float f; } v;
    v.u = 0xff800000u;
    return v.f;
}
template <> DLP_HOST_DEVICE double neg_inf<double>() {
    union { u64 u; double f; } v;
    v.u = 0xfff0000000000000ULL;
    return v.f;
}

}  // namespace dlp
