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

// flag[0] = 1 when some x_i is NaN or inf (found_inf: a plain store, every writer
// writes the same 1); the flag is zeroed by the caller and never read on the host
// inside a step.
template <typename T>
__global__ void nonfinite_flag(const T* __restrict__ x, long long n, int* __restrict__ flag) {
    bool bad = false;
    DLP_GRID_STRIDE_LOOP(i, n) bad |= !dlp::is_finite(x[i]);
    if (__syncthreads_or(bad) && threadIdx.x == 0) *flag = 1;
}

// Gradient clipping on the device (PyTorch's clip_grad_norm_): from the accumulated
// sum |g|^ord (or max |g| for ord = inf) in acc[0], x *= min(max_norm / (norm + 1e-6), 1);
// a NaN norm gives a NaN coefficient, as on the host.
template <typename T>
__global__ void clip_scale(T* __restrict__ x, long long n, const double* __restrict__ acc,
                           double ord, double max_norm) {
    const T coef = (T)dlp::clip_coef(acc[0], ord, max_norm);
    DLP_GRID_STRIDE_LOOP(i, n) x[i] = x[i] * coef;
}
