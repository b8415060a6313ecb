// Per-element terms of the vector norms used for the global gradient norm:
// ||x||_p = (sum |x_i|^p)^(1/p), accumulated in double; p = inf is max |x_i|.
#pragma once
#include "common.cuh"

namespace dlp {

template <typename T>
DLP_HOST_DEVICE double norm_term(T x, double ord) {
    const double a = fabs_((double)x);
    return ord == 2.0 ? a * a : (ord == 1.0 ? a : pow_(a, ord));
}

DLP_HOST_DEVICE double norm_finish(double total, double ord) {
    return ord == 2.0 ? sqrt_(total) : (ord == 1.0 ? total : pow_(total, 1.0 / ord));
}

// min(max_norm / (norm + 1e-6), 1) from the accumulated total (ord <= 0: inf-norm,
// total is already the max); NaN stays NaN (fmin would drop it).
DLP_HOST_DEVICE double clip_coef(double total, double ord, double max_norm) {
    const double norm = ord > 0.0 ? norm_finish(total, ord) : total;
    if (norm != norm) return norm;
    const double c = max_norm / (norm + 1e-6);
    return c < 1.0 ? c : 1.0;
}

template <typename T>
DLP_HOST_DEVICE bool is_finite(T x) { return x - x == T(0); }

}  // namespace dlp
