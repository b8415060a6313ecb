// Per-element forward and backward of the activation functions.
//
// Backward conventions follow the Backend contract (dlprimer/backend/base.py):
// ReLU, sigmoid and tanh differentiate from their output y, the others from their
// input x. Masks multiply (gy * mask) rather than select, so a NaN gradient stays
// NaN exactly where the NumPy backend's ufunc chains keep it.
#pragma once
#include "common.cuh"

namespace dlp {

// relu(x) = max(x, 0); NaN passes through as in np.maximum.
template <typename T>
DLP_HOST_DEVICE T relu_fwd(T x) { return x <= T(0) ? T(0) : x; }
// gradient 0 at x == 0 (PyTorch's convention); y > 0 exactly where x > 0
template <typename T>
DLP_HOST_DEVICE T relu_bwd(T y, T gy) { return gy * (y > T(0) ? T(1) : T(0)); }

template <typename T>
DLP_HOST_DEVICE T leaky_relu_fwd(T x, T slope) { return x > T(0) ? x : x * slope; }
template <typename T>
DLP_HOST_DEVICE T leaky_relu_bwd(T x, T gy, T slope) { return x > T(0) ? gy : gy * slope; }

// elu(x) = x for x > 0, alpha (e^x - 1) otherwise
template <typename T>
DLP_HOST_DEVICE T elu_fwd(T x, T alpha) { return x > T(0) ? x : alpha * expm1_(x); }
template <typename T>
DLP_HOST_DEVICE T elu_bwd(T x, T gy, T alpha) { return x > T(0) ? gy : gy * (alpha * exp_(x)); }

// sigmoid(x) = 1 / (1 + e^-x), evaluated so that neither branch overflows
template <typename T>
DLP_HOST_DEVICE T sigmoid_fwd(T x) {
    if (x >= T(0)) return T(1) / (T(1) + exp_(-x));
    T e = exp_(x);
    return e / (T(1) + e);
}
// gy * y (1 - y), in the NumPy backend's order (1 - y) * y * gy
template <typename T>
DLP_HOST_DEVICE T sigmoid_bwd(T y, T gy) { return ((T(1) - y) * y) * gy; }

template <typename T>
DLP_HOST_DEVICE T tanh_fwd(T x) { return tanh_(x); }
template <typename T>
DLP_HOST_DEVICE T tanh_bwd(T y, T gy) { return (T(1) - y * y) * gy; }

// silu(x) = x sigmoid(x); d/dx = s (1 + x (1 - s))
template <typename T>
DLP_HOST_DEVICE T silu_fwd(T x) { return x * sigmoid_fwd(x); }
template <typename T>
DLP_HOST_DEVICE T silu_bwd(T x, T gy) {
    T s = sigmoid_fwd(x);
    return gy * (s * (T(1) + x * (T(1) - s)));
}

// GELU (Hendrycks & Gimpel): x Phi(x) with Phi the standard normal CDF (the
// chapter's "x * Phi(x)"), or the tanh approximation
// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
template <typename T>
DLP_HOST_DEVICE T gelu_erf_fwd(T x) {
    const T k_sqrt1_2 = T(0.70710678118654752440);
    return x * T(0.5) * (T(1) + erf_(x * k_sqrt1_2));
}
// d/dx x Phi(x) = Phi(x) + x phi(x)
template <typename T>
DLP_HOST_DEVICE T gelu_erf_bwd(T x, T gy) {
    const T k_sqrt1_2 = T(0.70710678118654752440);
    const T k_inv_sqrt_2pi = T(0.39894228040143267794);
    T cdf = T(0.5) * (T(1) + erf_(x * k_sqrt1_2));
    T pdf = exp_(T(-0.5) * x * x) * k_inv_sqrt_2pi;
    return gy * (cdf + x * pdf);
}

template <typename T>
DLP_HOST_DEVICE T gelu_tanh_fwd(T x) {
    const T k_beta = T(0.79788456080286535588);  // sqrt(2 / pi)
    const T k_kappa = T(0.044715);
    T inner = k_beta * (x + k_kappa * x * x * x);
    return T(0.5) * x * (T(1) + tanh_(inner));
}
template <typename T>
DLP_HOST_DEVICE T gelu_tanh_bwd(T x, T gy) {
    const T k_beta = T(0.79788456080286535588);
    const T k_kappa = T(0.044715);
    T x_sq = x * x;
    T inner = k_beta * (x + k_kappa * x_sq * x);
    T t = tanh_(inner);
    T left = T(0.5) * x;
    T right = T(1) + t;
    T left_derivative = T(0.5) * right;
    T right_derivative = T(1) - t * t;
    T inner_derivative = k_beta * (T(1) + T(3) * k_kappa * x_sq);
    return gy * (left_derivative + left * right_derivative * inner_derivative);
}

template <typename T>
DLP_HOST_DEVICE T gelu_fwd(T x, int approx_tanh) {
    return approx_tanh ? gelu_tanh_fwd(x) : gelu_erf_fwd(x);
}
template <typename T>
DLP_HOST_DEVICE T gelu_bwd(T x, T gy, int approx_tanh) {
    return approx_tanh ? gelu_tanh_bwd(x, gy) : gelu_erf_bwd(x, gy);
}

}  // namespace dlp
