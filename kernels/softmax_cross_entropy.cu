// Row-wise softmax cross-entropy over (N, C) logits with integer targets (N,),
// optionally label-smoothed. Forward: one block per row, three passes over the
// row (max; sums of e^(x - m) and of x - m; probabilities), writing the row's
// loss and its probabilities (what backward needs). Backward: elementwise
// (p - q) * gy. The formulas are in softmax_cross_entropy.cuh.
//
// The fused classifier (fused_classifier_*) is what the autograd path runs on the GPU:
// forward reads the logits once (online softmax) and keeps only (m, log s) per row;
// backward recomputes p from the logits and them and may write the gradient over the logits.
#include "half.cuh"
#include "reduce.cuh"
#include "softmax_cross_entropy.cuh"

template <typename T>
__global__ void softmax_cross_entropy_forward(const T* __restrict__ logits,
                                              const long long* __restrict__ target,
                                              T* __restrict__ loss, T* __restrict__ probs,
                                              long long rows, long long c, T one_minus_eps,
                                              T eps) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* x = logits + r * c;
        T* p = probs + r * c;
        T m = x[0];
        for (long long j = threadIdx.x; j < c; j += blockDim.x) m = dlp::nan_max(m, x[j]);
        m = dlp::block_reduce(m, dlp::MaxOp(), m);
        T s = T(0), sum_z = T(0);
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            const T z = x[j] - m;
            s += dlp::exp_(z);
            sum_z += z;
        }
        s = dlp::block_reduce(s, dlp::SumOp(), T(0));
        if (eps != T(0)) sum_z = dlp::block_reduce(sum_z, dlp::SumOp(), T(0));
        for (long long j = threadIdx.x; j < c; j += blockDim.x) p[j] = dlp::sce_prob(x[j], m, s);
        if (threadIdx.x == 0) {
            const long long t = target[r];
            const bool ok = t >= 0 && t < c;
            loss[r] = ok ? dlp::sce_loss(dlp::log_(s), x[t] - m, sum_z, one_minus_eps, eps,
                                         T(c))
                         : dlp::quiet_nan<T>();
        }
    }
}

template <typename T>
__global__ void softmax_cross_entropy_backward(const T* __restrict__ probs,
                                               const long long* __restrict__ target,
                                               const T* __restrict__ gy, T* __restrict__ gx,
                                               long long rows, long long c, T one_minus_eps,
                                               T eps_over_c) {
    DLP_GRID_STRIDE_LOOP(i, rows * c) {
        const long long r = i / c, j = i - r * c;
        gx[i] = dlp::sce_grad(probs[i], target[r] == j, one_minus_eps, eps_over_c, gy[r]);
    }
}

// Forward of the fused classifier: one block per row, each thread an online softmax over
// its strided columns, then the (m, s) pairs merged across the block; stats[r] = (m, log s).
// Half logits (__half, __nv_bfloat16) are read as float (half.cuh): the sums, the loss and
// the stats are acc_t<T> (float), as PyTorch's autocast gives a float32 loss.
template <typename T>
__global__ void fused_classifier_forward(const T* __restrict__ logits,
                                         const long long* __restrict__ target,
                                         dlp::acc_t<T>* __restrict__ loss,
                                         dlp::acc_t<T>* __restrict__ stats, long long rows,
                                         long long c, dlp::acc_t<T> one_minus_eps,
                                         dlp::acc_t<T> eps) {
    typedef dlp::acc_t<T> A;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const T* x = logits + r * c;
        A m = dlp::neg_inf<A>(), s = A(0), sum_x = A(0);
        for (long long j = threadIdx.x; j < c; j += blockDim.x) {
            const A xj = dlp::to_acc(x[j]);
            dlp::online_softmax_add(xj, m, s);
            sum_x += xj;
        }
        const A M = dlp::block_reduce(m, dlp::MaxOp(), dlp::neg_inf<A>());
        s = dlp::block_reduce(dlp::online_softmax_rescale(m, s, M), dlp::SumOp(), A(0));
        if (eps != A(0)) sum_x = dlp::block_reduce(sum_x, dlp::SumOp(), A(0));
        if (threadIdx.x == 0) {
            const A log_s = dlp::log_(s);
            const long long t = target[r];
            const bool ok = t >= 0 && t < c;
            stats[2 * r] = M;
            stats[2 * r + 1] = log_s;
            loss[r] = ok ? dlp::classifier_loss(log_s, dlp::to_acc(x[t]), M, sum_x, one_minus_eps,
                                                eps, A(c))
                         : dlp::quiet_nan<A>();
        }
    }
}

// Backward: gx = (e^((x - m) - log s) - q) gy per row; gx may be the logits themselves
// (in place), so neither pointer is __restrict__. Blocks take rows, threads columns.
// Half logits: float math, one rounding into the half gradient.
template <typename T>
__global__ void fused_classifier_backward(const T* logits, const dlp::acc_t<T>* __restrict__ stats,
                                          const long long* __restrict__ target,
                                          const dlp::acc_t<T>* __restrict__ gy, T* gx,
                                          long long rows, long long c,
                                          dlp::acc_t<T> one_minus_eps, dlp::acc_t<T> eps_over_c) {
    typedef dlp::acc_t<T> A;
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const A m = stats[2 * r], log_s = stats[2 * r + 1], g = gy[r];
        const long long t = target[r];
        for (long long j = threadIdx.x; j < c; j += blockDim.x)
            gx[r * c + j] = dlp::from_acc<T>(dlp::classifier_grad(
                dlp::to_acc(logits[r * c + j]), m, log_s, t == j, one_minus_eps, eps_over_c, g));
    }
}
