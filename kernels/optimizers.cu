// Fused optimizer updates over one param group's flat arena, in place: SGD
// (momentum, dampening, Nesterov), Adam / AdamW, LAMB and LARS. SGD and Adam are
// one launch; LAMB and LARS need per-parameter norms first, so they take two: a
// norm pass accumulating sums of squares per parameter (double atomics, one per
// block), then the update. Per-element math: optimizers.cuh.
//
// Segmented passes use a block table built on the host: block b covers
// [block_start[b], min(block_start[b] + chunk, offsets[seg + 1])) of parameter
// seg = block_seg[b], so every block lies inside one parameter and reduces once.
//
// Every update takes `skip`, a device flag (found_inf): when it is nonzero the kernel
// returns at once, so a step with a NaN or inf gradient leaves weights and state as
// they were, decided on the device without a host read. SGD and Adam read and write
// 16 bytes at a time between a scalar head and tail (vector.cuh).
#include "optimizers.cuh"
#include "reduce.cuh"
#include "vector.cuh"

#define DLP_TID ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define DLP_STRIDE ((long long)blockDim.x * gridDim.x)
#define DLP_SKIP_IF_FLAGGED \
    if (*skip != 0) return;

template <typename T>
__global__ void sgd_update(const int* __restrict__ skip,
                           T* __restrict__ p,
                           const T* __restrict__ g, T* __restrict__ buf, long long n,
                           long long head, T lr, T momentum, T one_minus_dampening,
                           T weight_decay, int has_buf, int nesterov, int first_step) {
    DLP_SKIP_IF_FLAGGED
    DLP_PACKED_LOOP(T, n, head, DLP_TID, DLP_STRIDE, {
        T pi = p[i];
        dlp::sgd_step(pi, g[i], has_buf ? buf + i : (T*)0, lr, momentum, one_minus_dampening,
                      weight_decay, nesterov != 0, first_step != 0);
        p[i] = pi;
    }, {
        dlp::Pack<T> pv = dlp::load_pack(p + i);
        const dlp::Pack<T> gv = dlp::load_pack(g + i);
        dlp::Pack<T> bv;
        if (has_buf) bv = dlp::load_pack(buf + i);
        _Pragma("unroll") for (int j = 0; j < dlp::Pack<T>::size; ++j) {
            dlp::sgd_step(pv.v[j], gv.v[j], has_buf ? bv.v + j : (T*)0, lr, momentum,
                          one_minus_dampening, weight_decay, nesterov != 0, first_step != 0);
        }
        dlp::store_pack(p + i, pv);
        if (has_buf) dlp::store_pack(buf + i, bv);
    })
}

template <typename T>
__global__ void adam_update(const int* __restrict__ skip,
                           T* __restrict__ p,
                            const T* __restrict__ g, T* __restrict__ m, T* __restrict__ v,
                            long long n, long long head, T one_minus_beta1, T beta2,
                            T one_minus_beta2, T eps_hat, T weight_decay, T keep, T neg_alpha,
                            int decoupled) {
    DLP_SKIP_IF_FLAGGED
    DLP_PACKED_LOOP(T, n, head, DLP_TID, DLP_STRIDE, {
        T pi = p[i];
        T mi = m[i];
        T vi = v[i];
        dlp::adam_step(pi, g[i], mi, vi, one_minus_beta1, beta2, one_minus_beta2, eps_hat,
                       weight_decay, keep, neg_alpha, decoupled != 0);
        p[i] = pi;
        m[i] = mi;
        v[i] = vi;
    }, {
        dlp::Pack<T> pv = dlp::load_pack(p + i);
        dlp::Pack<T> mv = dlp::load_pack(m + i);
        dlp::Pack<T> vv = dlp::load_pack(v + i);
        const dlp::Pack<T> gv = dlp::load_pack(g + i);
        _Pragma("unroll") for (int j = 0; j < dlp::Pack<T>::size; ++j) {
            dlp::adam_step(pv.v[j], gv.v[j], mv.v[j], vv.v[j], one_minus_beta1, beta2,
                           one_minus_beta2, eps_hat, weight_decay, keep, neg_alpha,
                           decoupled != 0);
        }
        dlp::store_pack(p + i, pv);
        dlp::store_pack(m + i, mv);
        dlp::store_pack(v + i, vv);
    })
}

#define DLP_SEGMENT_BLOCK(s, start, end)                                   \
    const long long s = block_seg[blockIdx.x];                              \
    const long long start = block_start[blockIdx.x];                        \
    const long long end = min(start + chunk, offsets[s + 1]);

// LAMB pass 1: update m, v; sums[2s] += sum p^2, sums[2s + 1] += sum u^2.
template <typename T>
__global__ void lamb_moments_norms(const int* __restrict__ skip,
                                   const T* __restrict__ p, const T* __restrict__ g,
                                   T* __restrict__ m, T* __restrict__ v,
                                   const long long* __restrict__ offsets,
                                   const long long* __restrict__ block_seg,
                                   const long long* __restrict__ block_start, long long chunk,
                                   double* __restrict__ sums, T one_minus_beta1, T beta2,
                                   T one_minus_beta2, T inv_bc1, T inv_bc2_sqrt, T eps,
                                   T weight_decay) {
    DLP_SKIP_IF_FLAGGED
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
__global__ void lamb_apply(const int* __restrict__ skip,
                           T* __restrict__ p, const T* __restrict__ m, const T* __restrict__ v,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           const double* __restrict__ sums, double lr, T inv_bc1,
                           T inv_bc2_sqrt, T eps, T weight_decay) {
    DLP_SKIP_IF_FLAGGED
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
__global__ void lars_norms(const int* __restrict__ skip,
                                   const T* __restrict__ p, const T* __restrict__ g,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           double* __restrict__ sums) {
    DLP_SKIP_IF_FLAGGED
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
__global__ void lars_apply(const int* __restrict__ skip,
                           T* __restrict__ p, const T* __restrict__ g, T* __restrict__ buf,
                           const long long* __restrict__ offsets,
                           const long long* __restrict__ block_seg,
                           const long long* __restrict__ block_start, long long chunk,
                           const double* __restrict__ sums, T lr, T momentum, T weight_decay,
                           double trust_coefficient, double eps, int has_buf) {
    DLP_SKIP_IF_FLAGGED
    DLP_SEGMENT_BLOCK(s, start, end)
    const T local_lr = (T)dlp::lars_local_lr(sums[2 * s], sums[2 * s + 1], trust_coefficient,
                                             (double)weight_decay, eps);
    for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
        T pi = p[i];
        dlp::lars_step(pi, g[i], has_buf ? buf + i : (T*)0, lr, momentum, weight_decay, local_lr);
        p[i] = pi;
    }
}
