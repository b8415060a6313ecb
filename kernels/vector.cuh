// 128-bit vector access for elementwise kernels (llm.c's Packed128): a Pack<T> holds
// 16 bytes (4 floats or 2 doubles) and is loaded and stored in one instruction.
//
// An arena slice need not start on a 16-byte boundary, so a pass over [0, n) is split
// host-side into a scalar head [0, h), packs [h, h + P nv) and a scalar tail: `head`
// is the number of elements before the first aligned one (the same for every array of
// a launch, checked on the host), or -1 when the arrays disagree (all scalar).
// Only float is packed: unrolling two doubles of erf/exp math doubles the registers
// (gelu_erf_backward<double>: 123 on sm_90, 2 blocks of 256 per SM) for no gain in a
// kernel that is compute-bound in float64 anyway.
#pragma once
#include "common.cuh"

namespace dlp {

template <typename T>
struct alignas(16) Pack {
    static constexpr int size = 16 / sizeof(T);
    static constexpr bool used = sizeof(T) == 4;  // float only (see above)
    T v[16 / sizeof(T)];
};

// The split of [0, n): scalar head [0, h), nv packs from h, scalar tail from h + P nv.
struct PackedSplit {
    i64 h, nv, tail;
};
template <typename T>
DLP_HOST_DEVICE PackedSplit packed_split(i64 n, i64 head) {
    PackedSplit s;
    if (!Pack<T>::used || head < 0 || head >= n) {
        s.h = n;
        s.nv = 0;
    } else {
        s.h = head;
        s.nv = (n - head) / Pack<T>::size;
    }
    s.tail = s.h + s.nv * Pack<T>::size;
    return s;
}

// One elementwise pass y = f(x...) over [0, n) by thread `tid` of `stride`: the head and
// tail element by element, the middle a Pack at a time. Host code runs it with tid 0
// and stride 1 (tests/backend: the split covers every element once).
#define DLP_PACKED_LOOP(T, n, head, tid, stride, SCALAR, PACKED)                        \
    {                                                                                 \
        const dlp::PackedSplit dlp_s = dlp::packed_split<T>((n), (head));             \
        for (long long i = (tid); i < dlp_s.h; i += (stride)) { SCALAR; }             \
        if constexpr (dlp::Pack<T>::used) {                                           \
            for (long long k = (tid); k < dlp_s.nv; k += (stride)) {                  \
                const long long i = dlp_s.h + k * dlp::Pack<T>::size;                 \
                PACKED;                                                               \
            }                                                                         \
        }                                                                             \
        for (long long i = dlp_s.tail + (tid); i < (n); i += (stride)) { SCALAR; }     \
    }

template <typename T>
DLP_HOST_DEVICE Pack<T> load_pack(const T* p) { return *reinterpret_cast<const Pack<T>*>(p); }
template <typename T>
DLP_HOST_DEVICE void store_pack(T* p, const Pack<T>& v) { *reinterpret_cast<Pack<T>*>(p) = v; }

}  // namespace dlp
