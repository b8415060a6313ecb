// Per-row and per-element math of the fused softmax cross-entropy.
//
// Work in shifted logits z = x - m (m the row max, for stability): with
// s = sum_j e^(z_j), p_j = e^(z_j) / s, and against the label-smoothed target
// q = (1 - eps) onehot(t) + eps / C the loss (the chapter's cross-entropy
// -sum y log y_hat, with y = q) is
//     -sum_j q_j log p_j = (1 - eps) (log s - z_t) + eps (log s - (1/C) sum_j z_j);
// its gradient with respect to the logits is (p - q) * gy. The operation order
// follows the NumPy backend's, so the two round alike.
#pragma once
#include "common.cuh"

namespace dlp {

template <typename T>
DLP_HOST_DEVICE T sce_prob(T x, T m, T s) { return exp_(x - m) / s; }

template <typename T>
DLP_HOST_DEVICE T sce_loss(T log_s, T z_target, T sum_z, T one_minus_eps, T eps, T c) {
    T nll = log_s - z_target;
    if (eps == T(0)) return nll;
    return one_minus_eps * nll + eps * (log_s - sum_z / c);
}

// (p - eps / C) - (1 - eps) [j == t], times gy
template <typename T>
DLP_HOST_DEVICE T sce_grad(T p, bool is_target, T one_minus_eps, T eps_over_c, T gy) {
    return ((p - eps_over_c) - (is_target ? one_minus_eps : T(0))) * gy;
}

// One row, serially (the host twin of the block-parallel kernel; same formulas,
// the sums in a different order). A target outside [0, C) gives a NaN loss.
template <typename T>
DLP_HOST_DEVICE void sce_row_forward(const T* x, i64 c, i64 t, T one_minus_eps, T eps,
                                     T* probs, T* loss) {
    T m = x[0];
    for (i64 j = 1; j < c; ++j) m = nan_max(m, x[j]);
    T s = T(0), sum_z = T(0);
    for (i64 j = 0; j < c; ++j) {
        s += exp_(x[j] - m);
        sum_z += x[j] - m;
    }
    for (i64 j = 0; j < c; ++j) probs[j] = sce_prob(x[j], m, s);
    const bool ok = t >= 0 && t < c;
    *loss = ok ? sce_loss(log_(s), x[t] - m, sum_z, one_minus_eps, eps, T(c)) : quiet_nan<T>();
}

// -- the fused classifier (llm.c's fused_classifier, Milakov & Gimelshein's online
// softmax): one pass over a row keeps a running max m and a running sum s of e^(x - m),
// rescaling s when m grows, so the logits are read once and only (m, log s), two numbers
// per row, are kept for backward, which recomputes p = e^((x - m) - log s). Keeping m
// apart from log s (not lse = m + log s) keeps float32 exact for huge logits.
// A NaN logit makes the row NaN; -inf logits add nothing.
template <typename T>
DLP_HOST_DEVICE void online_softmax_add(T x, T& m, T& s) {
    if (x != x) {
        m = x;
        s = x;
    } else if (x > m) {
        s = s * exp_(m - x) + T(1);
        m = x;
    } else if (x > neg_inf<T>()) {
        s += exp_(x - m);
    }
}
// s rescaled from its own max m to the row's max M (0 when the part saw no element)
template <typename T>
DLP_HOST_DEVICE T online_softmax_rescale(T m, T s, T M) {
    return s == T(0) ? T(0) : s * exp_(m - M);
}
// The row loss as sce_loss, from z_t = x_t - m and sum_z = sum_j x_j - C m.
template <typename T>
DLP_HOST_DEVICE T classifier_loss(T log_s, T x_target, T m, T sum_x, T one_minus_eps, T eps,
                                  T c) {
    return sce_loss(log_s, x_target - m, eps == T(0) ? T(0) : sum_x - c * m, one_minus_eps,
                    eps, c);
}
template <typename T>
DLP_HOST_DEVICE T classifier_grad(T x, T m, T log_s, bool is_target, T one_minus_eps,
                                  T eps_over_c, T gy) {
    return sce_grad(exp_((x - m) - log_s), is_target, one_minus_eps, eps_over_c, gy);
}

// One row, serially (the host twin of the block-parallel kernel); stats = (m, log s).
template <typename T>
DLP_HOST_DEVICE void classifier_row_forward(const T* x, i64 c, i64 t, T one_minus_eps, T eps,
                                            T* loss, T* stats) {
    T m = neg_inf<T>(), s = T(0), sum_x = T(0);
    for (i64 j = 0; j < c; ++j) {
        online_softmax_add(x[j], m, s);
        sum_x += x[j];
    }
    const T log_s = log_(s);
    stats[0] = m;
    stats[1] = log_s;
    const bool ok = t >= 0 && t < c;
    *loss = ok ? classifier_loss(log_s, x[t], m, sum_x, one_minus_eps, eps, T(c))
               : quiet_nan<T>();
}

}  // namespace dlp
