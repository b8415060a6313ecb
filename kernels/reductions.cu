// Reductions for the global gradient norm over many arrays: each launch adds one
// array's partial into a single double on the device, so a whole model's norm
// costs one launch per array and one synchronisation at the end.
#include "reductions.cuh"
#include "reduce.cuh"

// out[0] += sum |x_i|^ord
template <typename T>
__global__ void norm_pow_sum(const T* __restrict__ x, long long n, double ord,
                             double* __restrict__ out) {
    double acc = 0.0;
    DLP_GRID_STRIDE_LOOP(i, n) acc += dlp::norm_term(x[i], ord);
    acc = dlp::block_reduce(acc, dlp::SumOp(), 0.0);
    if (threadIdx.x == 0) atomicAdd(out, acc);
}

// out[0] = max(out[0], max |x_i|); NaN wins (its bits sort above +inf)
template <typename T>
__global__ void norm_max_abs(const T* __restrict__ x, long long n, double* __restrict__ out) {
    double acc = 0.0;
    DLP_GRID_STRIDE_LOOP(i, n) acc = dlp::nan_max(acc, (double)dlp::fabs_(x[i]));
    acc = dlp::block_reduce(acc, dlp::MaxOp(), 0.0);
    if (threadIdx.x == 0) dlp::atomic_max_nonneg(out, acc);
}
