// Counter-based random numbers: a uniform is a pure function of (seed, counter,
// index), so a dropout mask can be regenerated exactly in backward or under
// gradient checkpointing with nothing saved.
//
// The hash is splitmix64's finaliser (Steele, Lea & Flood 2014) applied to a
// Weyl-sequence mix of the key; it must stay bit-identical to
// CPUBackend.counter_uniform in dlprimer/backend/cpu.py.
#pragma once
#include "common.cuh"

namespace dlp {

DLP_HOST_DEVICE u64 splitmix64_hash(u64 seed, u64 counter, u64 index) {
    u64 z = seed * 0x9E3779B97F4A7C15ULL + counter * 0xD1B54A32D192ED03ULL;
    z = index * 0x94D049BB133111EBULL + z;
    z ^= z >> 30;
    z *= 0xBF58476D1CE4E5B9ULL;
    z ^= z >> 27;
    z *= 0x94D049BB133111EBULL;
    z ^= z >> 31;
    return z;
}

// The top 24 bits as a float32 in [0, 1): exact, so both backends agree bit for bit.
DLP_HOST_DEVICE float counter_uniform(u64 seed, u64 counter, u64 index) {
    return (float)(splitmix64_hash(seed, counter, index) >> 40) * 5.9604644775390625e-08f;
}

// Element i is kept iff its uniform >= p (p rounded to float32, as NumPy compares
// a float32 array with a Python float).
DLP_HOST_DEVICE bool dropout_keep(u64 seed, u64 counter, u64 index, float p) {
    return counter_uniform(seed, counter, index) >= p;
}

// (x * scale) * mask with scale = 1 / (1 - p), in the NumPy backend's order; a
// dropped NaN stays NaN (NaN * 0).
template <typename T>
DLP_HOST_DEVICE T dropout_apply(T x, bool keep, T scale) {
    return (x * scale) * (keep ? T(1) : T(0));
}

}  // namespace dlp
