// Fused optimizer updates over one param group's flat arena, in place: SGD
// (momentum, dampening, Nesterov), Adam / AdamW, LAMB and LARS. SGD and Adam are
// one launch; LAMB and LARS need per-parameter norms first, so they take two: a
// norm pass accumulating sums of squares per parameter (double atomics, one per
// block), then the update. Per-element math: optimizers.cuh.
//
// Segmented passes use a block table built on the host: block b covers
// [block_start[b], min(block_start[b] + chunk, offsets[seg + 1])) of parameter
// seg = block_seg[b], so every block lies inside one parameter and reduces once.
#include "optimizers.cuh"
#include "reduce.cuh"

template <typename T>
__global__ void sgd_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                           long long n, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, int has_buf, int nesterov, int first_step) {
    DLP_GRID_STRIDE_LOOP(i, n) {
        T pi = p[i];
        dlp::sgd_step(pi, g[i], has_buf ? buf + i : (T*)0, lr, momentum, one_minus_dampening,
                      weight_decay, nesterov != 0, first_step != 0);
        p[i] = pi;
    }
}

template <typename T>
__global__ void adam_update(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ m,
                            T* __restrict__ v, long long n, T one_minus_beta1, T beta2,
                            T one_minus_beta2, T eps_hat, T weight_decay, T keep, T neg_alpha,
                            int decoupled) {
    DLP_GRID_STRIDE_LOOP(i, n) {
        T pi = p[i], mi = m[i], vi = v[i];
        dlp::adam_step(pi, g[i], mi, vi, one_minus_beta1, beta2, one_minus_beta2, eps_hat,
                       weight_decay, keep, neg_alpha, decoupled != 0);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }
}

#define DLP_SEGMENT_BLOCK(s, start, end)                                   \
    const long long s = block_seg[blockIdx.x];                              \
    const long long start = block_start[blockIdx.x];                        \
    const long long end = min(start + chunk, offsets[s + 1]);

// LAMB pass 1: update m, v; sums[2s] += sum p^2, sums[2s + 1] += sum u^2.
template <typename T>
__global__ void lamb_moments_norms(const T* __restrict__ p, const T* __restrict__ g,
                                   T* __restrict__ m, T* __restrict__ v,
                                   const long long* __restrict__ offsets,
                                   const long long* __restrict__ block_seg,
                                   const long long* __restrict__ block_start, long long chunk,
                                   double* __restrict__ sums, T one_minus_beta1, T beta2,
                                   T one_minus_beta2, T inv_bc1, T inv_bc2_sqrt, T eps,
                                   T weight_decay) {
    DLP_SEGMENT_BLOCK(s, start, end)
    double p_sq = 0.0, u_sq = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        T mi = m[i], vi = v[i], pi = p[i];
        dlp::adam_moments(g[i], mi, vi, one_minus_beta1, beta2, one_minus_beta2);
        m[i] = mi;
        v[i] = vi;
        T u = dlp::lamb_direction(pi, mi, vi, inv_bc1, inv_bc2_sqrt, eps, weight_decay);
        p_sq += (double)pi * (double)pi;
        u_sq += (double)u * (double)u;
    }
    p_sq = dlp::block_reduce(p_sq, dlp::SumOp(), 0.0);
    u_sq = dlp::block_reduce(u_sq, dlp::SumOp(), 0.0);
    if (threadIdx.x == 0) {
        atomicAdd(sums + 2 * s, p_sq);
        atomicAdd(sums + 2 * s + 1, u_sq);
    }
}

// LAMB pass 2: p += u * (-lr trust(s)), u recomputed from the updated m, v.
template <typename T>
__global__ void lamb_apply(T* __restrict__ p, const T* __restrict__ m, const T* __restrict__ v,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           const double* __restrict__ sums, double lr, T inv_bc1,
                           T inv_bc2_sqrt, T eps, T weight_decay) {
    DLP_SEGMENT_BLOCK(s, start, end)
    const T scale = (T)(-lr * dlp::lamb_trust(sums[2 * s], sums[2 * s + 1]));
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        T pi = p[i];
        T u = dlp::lamb_direction(pi, m[i], v[i], inv_bc1, inv_bc2_sqrt, eps, weight_decay);
        p[i] = pi + u * scale;
    }
}

// LARS pass 1: sums[2s] += sum w^2, sums[2s + 1] += sum g^2.
template <typename T>
__global__ void lars_norms(const T* __restrict__ p, const T* __restrict__ g,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           double* __restrict__ sums) {
    DLP_SEGMENT_BLOCK(s, start, end)
    double w_sq = 0.0, g_sq = 0.0;
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        const double wi = (double)p[i], gi = (double)g[i];
        w_sq += wi * wi;
        g_sq += gi * gi;
    }
    w_sq = dlp::block_reduce(w_sq, dlp::SumOp(), 0.0);
    g_sq = dlp::block_reduce(g_sq, dlp::SumOp(), 0.0);
    if (threadIdx.x == 0) {
        atomicAdd(sums + 2 * s, w_sq);
        atomicAdd(sums + 2 * s + 1, g_sq);
    }
}

// LARS pass 2: momentum SGD on (g + wd w) * local_lr(s).
template <typename T>
__global__ void lars_apply(T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           const double* __restrict__ sums, T lr, T momentum, T weight_decay,
                           double trust_coefficient, double eps, int has_buf) {
    DLP_SEGMENT_BLOCK(s, start, end)
    const T local_lr = (T)dlp::lars_local_lr(sums[2 * s], sums[2 * s + 1], trust_coefficient,
                                             (double)weight_decay, eps);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        T pi = p[i];
        dlp::lars_step(pi, g[i], has_buf ? buf + i : (T*)0, lr, momentum, weight_decay, local_lr);
        p[i] = pi;
    }
}
