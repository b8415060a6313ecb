// Dropout with a counter-based mask: element i of the call keyed (seed, counter)
// is kept iff counter_uniform(seed, counter, i) >= p (random.cuh), so backward
// regenerates the mask instead of storing it. Kept elements are scaled by
// scale = 1 / (1 - p) (inverted dropout). For __half / __nv_bfloat16 storage the
// scale and the product are float (half.cuh) and the store rounds once; the mask does
// not depend on T, so a half and a float run with one key drop the same elements.
#include "half.cuh"
#include "random.cuh"
#include "reduce.cuh"

template <typename T>
__global__ void dropout_forward(const T* __restrict__ x, T* __restrict__ y, long long n,
                                unsigned long long seed, unsigned long long counter, float p,
                                dlp::acc_t<T> scale) {
    DLP_GRID_STRIDE_LOOP(i, n)
        y[i] = dlp::from_acc<T>(
            dlp::dropout_apply(dlp::to_acc(x[i]), dlp::dropout_keep(seed, counter, i, p), scale));
}

// Identical to the forward: gx = gy * scale * mask.
template <typename T>
__global__ void dropout_backward(const T* __restrict__ gy, T* __restrict__ gx, long long n,
                                 unsigned long long seed, unsigned long long counter, float p,
                                 dlp::acc_t<T> scale) {
    DLP_GRID_STRIDE_LOOP(i, n)
        gx[i] = dlp::from_acc<T>(
            dlp::dropout_apply(dlp::to_acc(gy[i]), dlp::dropout_keep(seed, counter, i, p), scale));
}

extern "C" __global__ void dropout_keep_mask(bool* __restrict__ keep, long long n,
                                             unsigned long long seed,
                                             unsigned long long counter, float p) {
    DLP_GRID_STRIDE_LOOP(i, n) keep[i] = dlp::dropout_keep(seed, counter, i, p);
}

extern "C" __global__ void counter_uniform_fill(float* __restrict__ u, long long n,
                                                unsigned long long seed,
                                                unsigned long long counter) {
    DLP_GRID_STRIDE_LOOP(i, n) u[i] = dlp::counter_uniform(seed, counter, i);
}
