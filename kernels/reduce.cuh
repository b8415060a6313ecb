// Block-wide reductions and launch helpers for the kernels (device code only).
#pragma once
#include "common.cuh"

#if defined(DLP_DEVICE_COMPILE)
namespace dlp {

#define DLP_GRID_STRIDE_LOOP(i, n)                                               \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)blockDim.x * gridDim.x)

struct SumOp {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const { return a + b; }
};
struct MaxOp {
    template <typename T> __device__ __forceinline__ T operator()(T a, T b) const {
        return nan_max(a, b);
    }
};

template <typename T, typename Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
    for (int offset = 16; offset > 0; offset >>= 1) v = op(v, __shfl_down_sync(0xffffffffu, v, offset));
    return v;
}

// Reduce over the whole block (blockDim.x a multiple of 32, at most 1024); every
// thread gets the result. `identity` fills the lanes of absent warps.
template <typename T, typename Op>
__device__ __forceinline__ T block_reduce(T v, Op op, T identity) {
    __shared__ T partial[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_reduce(v, op);
    __syncthreads();  // partial may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    const int nwarps = (blockDim.x + 31) >> 5;
    v = (lane < nwarps) ? partial[lane] : identity;
    if (warp == 0) v = warp_reduce(v, op);
    if (threadIdx.x == 0) partial[0] = v;
    __syncthreads();
    return partial[0];
}

// atomicMax for non-negative doubles (and NaN, whose bits sort above +inf)
__device__ __forceinline__ void atomic_max_nonneg(double* addr, double v) {
    atomicMax(reinterpret_cast<unsigned long long*>(addr),
              (unsigned long long)__double_as_longlong(v));
}

}  // namespace dlp
#endif
