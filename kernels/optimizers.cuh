// Per-element optimizer updates: PyTorch's SGD and Adam/AdamW semantics, LAMB and
// LARS, each written in the same operation order as the NumPy backend's blocked
// ufunc chains (dlprimer/backend/cpu.py), so both backends round alike. Scalars
// that depend only on the step (bias corrections, step size) are computed once on
// the host in double and passed in the parameter's precision.
#pragma once
#include "common.cuh"

namespace dlp {

// SGD with momentum mu, dampening tau and Nesterov:
//   d = g + wd p;  buf = d (first step) or mu buf + (1 - tau) d;
//   d = d + mu buf (Nesterov) or buf;  p = p - lr d.
template <typename T>
DLP_HOST_DEVICE void sgd_step(T& p, T g, T* buf, T lr, T momentum, T one_minus_dampening,
                              T weight_decay, bool nesterov, bool first_step) {
    T d = weight_decay != T(0) ? p * weight_decay + g : g;
    if (buf != 0) {
        T b = first_step ? d : (*buf) * momentum + d * one_minus_dampening;
        *buf = b;
        d = nesterov ? b * momentum + d : b;
    }
    p = p + d * (-lr);
}

// Adam (Kingma & Ba 2015, Alg. 1) with L2 decay, or AdamW (Loshchilov & Hutter
// 2019) with the decay decoupled (p *= 1 - lr wd, passed as `keep`):
//   m += (g - m)(1 - b1);  v = b2 v + (1 - b2) g^2;
//   p += -a_t m / (sqrt(v) + eps_hat),
// the paper's efficient form of PyTorch's lr/(1-b1^t) m / (sqrt(v)/sqrt(1-b2^t) + eps):
// a_t = lr sqrt(1-b2^t) / (1-b1^t), eps_hat = eps sqrt(1-b2^t) (as the NumPy backend).
template <typename T>
DLP_HOST_DEVICE void adam_moments(T g, T& m, T& v, T one_minus_beta1, T beta2,
                                  T one_minus_beta2) {
    m = m + (g - m) * one_minus_beta1;
    v = v * beta2 + (g * g) * one_minus_beta2;
}
template <typename T>
DLP_HOST_DEVICE void adam_step(T& p, T g, T& m, T& v, T one_minus_beta1, T beta2,
                               T one_minus_beta2, T eps_hat, T weight_decay, T keep,
                               T neg_alpha, bool decoupled) {
    if (weight_decay != T(0)) {
        if (decoupled) p = p * keep;
        else g = p * weight_decay + g;
    }
    adam_moments(g, m, v, one_minus_beta1, beta2, one_minus_beta2);
    p = p + (m / (sqrt_(v) + eps_hat)) * neg_alpha;
}

// LAMB (You et al. 2019, Alg. 2), first pass: Adam moments, then the direction
//   u = (m / (sqrt(v) / sqrt(1-b2^t) + eps)) / (1-b1^t) + wd p
// whose norm, with p's, sets the per-parameter trust ratio. The second pass
// recomputes u from the stored m, v (p is unchanged until then).
template <typename T>
DLP_HOST_DEVICE T lamb_direction(T p, T m, T v, T inv_bc1, T inv_bc2_sqrt, T eps,
                                 T weight_decay) {
    T u = (m / (sqrt_(v) * inv_bc2_sqrt + eps)) * inv_bc1;
    return weight_decay != T(0) ? u + p * weight_decay : u;
}
// trust = ||p|| / ||u||, 1 where either norm is 0 (from sums of squares)
DLP_HOST_DEVICE double lamb_trust(double p_sumsq, double u_sumsq) {
    return (p_sumsq > 0.0 && u_sumsq > 0.0) ? sqrt(p_sumsq / u_sumsq) : 1.0;
}

// LARS (You et al. 2017): local lr = tc ||w|| / (||g|| + wd ||w|| + eps) per
// parameter (1 where either norm is 0), then momentum SGD on (g + wd w) * local lr.
DLP_HOST_DEVICE double lars_local_lr(double w_sumsq, double g_sumsq, double trust_coefficient,
                                     double weight_decay, double eps) {
    if (!(w_sumsq > 0.0 && g_sumsq > 0.0)) return 1.0;
    double wn = sqrt(w_sumsq), gn = sqrt(g_sumsq);
    return trust_coefficient * wn / (gn + weight_decay * wn + eps);
}
template <typename T>
DLP_HOST_DEVICE void lars_step(T& p, T g, T* buf, T lr, T momentum, T weight_decay,
                               T local_lr) {
    T d = (weight_decay != T(0) ? p * weight_decay + g : g) * local_lr;
    if (buf != 0) {
        T b = (*buf) * momentum + d;
        *buf = b;
        d = b;
    }
    p = p + d * (-lr);
}

}  // namespace dlp
