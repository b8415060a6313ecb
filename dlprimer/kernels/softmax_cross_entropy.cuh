// Per-row and per-element math of the fused softmax cross-entropy.
//
// With lse = m + log(sum_j e^(x_j - m)) (m the row max, for stability), the
// probabilities are p_j = e^(x_j - m) / s and, against the label-smoothed target
// q = (1 - eps) onehot(t) + eps / C, the loss is
//     -sum_j q_j log p_j = lse - (1 - eps) x_t - (eps / C) sum_j x_j,
// and its gradient with respect to the logits is (p - q) * gy.
#pragma once
#include "common.cuh"

namespace dlp {

template <typename T>
DLP_HOST_DEVICE T sce_prob(T x, T m, T s) { return exp_(x - m) / s; }

template <typename T>
DLP_HOST_DEVICE T sce_loss(T lse, T x_target, T sum_x, T one_minus_eps, T eps_over_c) {
    return lse - one_minus_eps * x_target - eps_over_c * sum_x;
}

template <typename T>
DLP_HOST_DEVICE T sce_grad(T p, bool is_target, T one_minus_eps, T eps_over_c, T gy) {
    T q = is_target ? one_minus_eps + eps_over_c : eps_over_c;
    return (p - q) * gy;
}

// One row, serially (the host twin of the block-parallel kernel; same formulas,
// the sums in a different order). A target outside [0, C) gives a NaN loss.
template <typename T>
DLP_HOST_DEVICE void sce_row_forward(const T* x, i64 c, i64 t, T one_minus_eps, T eps_over_c,
                                     T* probs, T* loss) {
    T m = x[0];
    for (i64 j = 1; j < c; ++j) m = nan_max(m, x[j]);
    T s = T(0), sum_x = T(0);
    for (i64 j = 0; j < c; ++j) {
        s += exp_(x[j] - m);
        sum_x += x[j];
    }
    for (i64 j = 0; j < c; ++j) probs[j] = sce_prob(x[j], m, s);
    T lse = m + log_(s);
    bool ok = t >= 0 && t < c;
    T x_t = ok ? x[t] : T(0);
    *loss = ok ? sce_loss(lse, x_t, sum_x, one_minus_eps, eps_over_c) : quiet_nan<T>();
}

}  // namespace dlp
