// Per-element optimizer updates, written to follow PyTorch's single-tensor
// implementations operation by operation (torch/optim/sgd.py, adam.py), so the
// trajectories agree to float rounding. Scalars that depend only on the step
// (bias corrections, step size) are computed once on the host in double and
// passed in the parameter's precision.
#pragma once
#include "common.cuh"

namespace dlp {

// torch.lerp: a + w (b - a), or b - (b - a)(1 - w) for w >= 0.5
template <typename T>
DLP_HOST_DEVICE T lerp(T a, T b, T w) {
    return w < T(0.5) ? a + w * (b - a) : b - (b - a) * (T(1) - w);
}

// SGD with momentum mu, dampening tau and Nesterov:
//   d = g + wd p;  buf = d (first step) or mu buf + (1 - tau) d;
//   d = d + mu buf (Nesterov) or buf;  p = p - lr d.
template <typename T>
DLP_HOST_DEVICE void sgd_step(T& p, T g, T* buf, T lr, T momentum, T one_minus_dampening,
                              T weight_decay, bool nesterov, bool first_step) {
    T d = weight_decay != T(0) ? g + weight_decay * p : g;
    if (buf != 0) {
        T b = first_step ? d : momentum * (*buf) + one_minus_dampening * d;
        *buf = b;
        d = nesterov ? d + momentum * b : b;
    }
    p = p + (-lr) * d;
}

// Adam (Kingma & Ba 2015) with L2 decay, or AdamW (Loshchilov & Hutter 2019) with
// the decay decoupled (p *= 1 - lr wd, passed as `decay`):
//   m = lerp(m, g, 1 - b1);  v = b2 v + (1 - b2) g^2;
//   p = p - step_size m / (sqrt(v) / sqrt(1 - b2^t) + eps),  step_size = lr / (1 - b1^t).
template <typename T>
DLP_HOST_DEVICE void adam_step(T& p, T g, T& m, T& v, T one_minus_beta1, T beta2,
                               T one_minus_beta2, T eps, T weight_decay, T decay,
                               T step_size, T bias_correction2_sqrt, bool decoupled) {
    if (decoupled) {
        p = p * decay;
    } else if (weight_decay != T(0)) {
        g = g + weight_decay * p;
    }
    m = lerp(m, g, one_minus_beta1);
    v = v * beta2 + one_minus_beta2 * (g * g);
    T denom = sqrt_(v) / bias_correction2_sqrt + eps;
    p = p + (-step_size) * (m / denom);
}

// LAMB (You et al. 2019), first half: Adam moments, then the update direction
//   u = m_hat / (sqrt(v_hat) + eps) + wd p
// whose norm, with p's, sets the per-parameter trust ratio. The second pass
// recomputes u from the stored m, v (p is unchanged until then).
template <typename T>
DLP_HOST_DEVICE void lamb_moments(T g, T& m, T& v, T one_minus_beta1, T beta2,
                                  T one_minus_beta2) {
    m = lerp(m, g, one_minus_beta1);
    v = v * beta2 + one_minus_beta2 * (g * g);
}
template <typename T>
DLP_HOST_DEVICE T lamb_direction(T p, T m, T v, T bias_correction1, T bias_correction2,
                                 T eps, T weight_decay) {
    T m_hat = m / bias_correction1;
    T v_hat = v / bias_correction2;
    return m_hat / (sqrt_(v_hat) + eps) + weight_decay * p;
}
// trust = ||p|| / ||u||, 1 where either norm is 0 (from sums of squares)
DLP_HOST_DEVICE double lamb_trust(double p_sumsq, double u_sumsq) {
    return (p_sumsq > 0.0 && u_sumsq > 0.0) ? sqrt(p_sumsq) / sqrt(u_sumsq) : 1.0;
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
    T d = (g + weight_decay * p) * local_lr;
    if (buf != 0) {
        T b = momentum * (*buf) + d;
        *buf = b;
        d = b;
    }
    p = p + (-lr) * d;
}

}  // namespace dlp
