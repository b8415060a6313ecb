// Host driver for the CUDA kernels' per-element math (dlprimer/kernels/*.cuh).
//
// Built with the host C++ compiler by tests/backend/kernel_host.py and loaded
// through ctypes: each entry point loops over arrays the way the matching kernel
// does over threads, calling the very same __host__ __device__ functions, so the
// GPU math is checked against NumPy on machines without a GPU. The packed kernels'
// loops (vector.cuh: scalar head, 16-byte packs, scalar tail) run here as one thread
// (tid 0, stride 1) with the `head` the backend would pass.
#include <stdint.h>
#include <stdlib.h>

#include "activations.cuh"
#include "half.cuh"
#include "optimizers.cuh"
#include "random.cuh"
#include "reductions.cuh"
#include "softmax_cross_entropy.cuh"
#include "vector.cuh"

using dlp::i64;
using dlp::u64;

enum Act { RELU, LEAKY_RELU, ELU, GELU_ERF, GELU_TANH, SILU, SIGMOID, TANH };

template <typename T>
static T act1(int op, T x, T a) {
    switch (op) {
        case RELU: return dlp::relu_fwd(x);
        case LEAKY_RELU: return dlp::leaky_relu_fwd(x, a);
        case ELU: return dlp::elu_fwd(x, a);
        case GELU_ERF: return dlp::gelu_erf_fwd(x);
        case GELU_TANH: return dlp::gelu_tanh_fwd(x);
        case SILU: return dlp::silu_fwd(x);
        case SIGMOID: return dlp::sigmoid_fwd(x);
        case TANH: return dlp::tanh_fwd(x);
        default: abort();
    }
}

// xy is the output y for relu / sigmoid / tanh, the input x otherwise
template <typename T>
static T act1_bwd(int op, T xy, T gy, T a) {
    switch (op) {
        case RELU: return dlp::relu_bwd(xy, gy);
        case LEAKY_RELU: return dlp::leaky_relu_bwd(xy, gy, a);
        case ELU: return dlp::elu_bwd(xy, gy, a);
        case GELU_ERF: return dlp::gelu_erf_bwd(xy, gy);
        case GELU_TANH: return dlp::gelu_tanh_bwd(xy, gy);
        case SILU: return dlp::silu_bwd(xy, gy);
        case SIGMOID: return dlp::sigmoid_bwd(xy, gy);
        case TANH: return dlp::tanh_bwd(xy, gy);
        default: abort();
    }
}

template <typename T>
static void act_fwd(int op, const T* x, T* y, i64 n, T a, i64 head) {
    DLP_PACKED_LOOP(T, n, head, 0, 1, { y[i] = act1(op, x[i], a); }, {
        const dlp::Pack<T> xv = dlp::load_pack(x + i);
        dlp::Pack<T> yv;
        for (int j = 0; j < dlp::Pack<T>::size; ++j) yv.v[j] = act1(op, xv.v[j], a);
        dlp::store_pack(y + i, yv);
    })
}

template <typename T>
static void act_bwd(int op, const T* xy, const T* gy, T* gx, i64 n, T a, i64 head) {
    DLP_PACKED_LOOP(T, n, head, 0, 1, { gx[i] = act1_bwd(op, xy[i], gy[i], a); }, {
        const dlp::Pack<T> xv = dlp::load_pack(xy + i);
        const dlp::Pack<T> gv = dlp::load_pack(gy + i);
        dlp::Pack<T> ov;
        for (int j = 0; j < dlp::Pack<T>::size; ++j) ov.v[j] = act1_bwd(op, xv.v[j], gv.v[j], a);
        dlp::store_pack(gx + i, ov);
    })
}

// How often the packed loop visits each element of [0, n) (must be once).
extern "C" void packed_visits_f32(i64 n, i64 head, int32_t* count) {
    DLP_PACKED_LOOP(float, n, head, 0, 1, { count[i] += 1; }, {
        for (int j = 0; j < dlp::Pack<float>::size; ++j) count[i + j] += 1;
    })
}

// As the kernels: the bias, the math and the partials in acc_t<T> (float for half T),
// one rounding on each store of T.
template <typename T>
static void bias_gelu_fwd(const T* x, const dlp::acc_t<T>* b, T* y, i64 n, i64 h, int approx) {
    for (i64 i = 0; i < n; ++i)
        y[i] = dlp::from_acc<T>(dlp::gelu_fwd(dlp::to_acc(x[i]) + b[i % h], approx));
}
// The block / warp / lane walk of the kernel, serially: tiles of 32 columns, chunks of
// rows_per_chunk rows, `warps` warps per block; partial[chunk * h + col] as on the GPU.
template <typename T>
static void bias_gelu_bwd(const T* x, const dlp::acc_t<T>* b, const T* gy, T* gx,
                          dlp::acc_t<T>* partial, i64 rows, i64 h, i64 rows_per_chunk,
                          int approx, int warps) {
    typedef dlp::acc_t<T> A;
    const i64 tiles = (h + 31) / 32, chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
    A sums[32][32];
    for (i64 blk = 0; blk < tiles * chunks; ++blk) {
        const i64 tile = blk % tiles, chunk = blk / tiles;
        const i64 r0 = chunk * rows_per_chunk;
        const i64 r1 = rows < r0 + rows_per_chunk ? rows : r0 + rows_per_chunk;
        for (int warp = 0; warp < warps; ++warp)
            for (int lane = 0; lane < 32; ++lane) {
                const i64 col = tile * 32 + lane;
                A acc = A(0);
                if (col < h)
                    for (i64 r = r0 + warp; r < r1; r += warps) {
                        const i64 i = r * h + col;
                        const A g = dlp::gelu_bwd(dlp::to_acc(x[i]) + b[col],
                                                  dlp::to_acc(gy[i]), approx);
                        gx[i] = dlp::from_acc<T>(g);
                        acc += g;
                    }
                sums[warp][lane] = acc;
            }
        for (int lane = 0; lane < 32; ++lane) {
            A acc = sums[0][lane];
            for (int w = 1; w < warps; ++w) acc += sums[w][lane];
            if (tile * 32 + lane < h) partial[chunk * h + tile * 32 + lane] = acc;
        }
    }
}

template <typename T>
static void dropout_apply(const T* x, T* y, i64 n, u64 seed, u64 counter, float p,
                          dlp::acc_t<T> scale) {
    for (i64 i = 0; i < n; ++i)
        y[i] = dlp::from_acc<T>(dlp::dropout_apply(
            dlp::to_acc(x[i]), dlp::dropout_keep(seed, counter, (u64)i, p), scale));
}

template <typename T>
static void sce_fwd(const T* x, const i64* target, i64 rows, i64 c, T one_minus_eps, T eps,
                    T* loss, T* probs) {
    for (i64 r = 0; r < rows; ++r)
        dlp::sce_row_forward(x + r * c, c, target[r], one_minus_eps, eps, probs + r * c, loss + r);
}
template <typename T>
static void sce_bwd(const T* probs, const i64* target, const T* gy, T* gx, i64 rows, i64 c,
                    T one_minus_eps, T eps_over_c) {
    for (i64 i = 0; i < rows * c; ++i) {
        const i64 r = i / c, j = i - r * c;
        gx[i] = dlp::sce_grad(probs[i], target[r] == j, one_minus_eps, eps_over_c, gy[r]);
    }
}

template <typename T>
static void sgd(T* p, const T* g, T* buf, i64 n, T lr, T momentum, T one_minus_dampening,
                T weight_decay, int nesterov, int first_step) {
    for (i64 i = 0; i < n; ++i)
        dlp::sgd_step(p[i], g[i], buf ? buf + i : (T*)0, lr, momentum, one_minus_dampening,
                      weight_decay, nesterov != 0, first_step != 0);
}

template <typename T>
static void adam(T* p, const T* g, T* m, T* v, i64 n, T one_minus_beta1, T beta2,
                 T one_minus_beta2, T eps_hat, T weight_decay, T keep, T neg_alpha,
                 int decoupled, i64 head) {
    DLP_PACKED_LOOP(T, n, head, 0, 1, {
        dlp::adam_step(p[i], g[i], m[i], v[i], one_minus_beta1, beta2, one_minus_beta2, eps_hat,
                       weight_decay, keep, neg_alpha, decoupled != 0);
    }, {
        dlp::Pack<T> pv = dlp::load_pack(p + i);
        dlp::Pack<T> mv = dlp::load_pack(m + i);
        dlp::Pack<T> vv = dlp::load_pack(v + i);
        const dlp::Pack<T> gv = dlp::load_pack(g + i);
        for (int j = 0; j < dlp::Pack<T>::size; ++j)
            dlp::adam_step(pv.v[j], gv.v[j], mv.v[j], vv.v[j], one_minus_beta1, beta2,
                           one_minus_beta2, eps_hat, weight_decay, keep, neg_alpha,
                           decoupled != 0);
        dlp::store_pack(p + i, pv);
        dlp::store_pack(m + i, mv);
        dlp::store_pack(v + i, vv);
    })
}

// Both passes of the LAMB kernels; sums has 2 * nseg doubles.
template <typename T>
static void lamb(T* p, const T* g, T* m, T* v, const i64* offsets, i64 nseg, double* sums,
                 double lr, T one_minus_beta1, T beta2, T one_minus_beta2, T inv_bc1,
                 T inv_bc2_sqrt, T eps, T weight_decay) {
    for (i64 s = 0; s < nseg; ++s) {
        double p_sq = 0.0, u_sq = 0.0;
        for (i64 i = offsets[s]; i < offsets[s + 1]; ++i) {
            dlp::adam_moments(g[i], m[i], v[i], one_minus_beta1, beta2, one_minus_beta2);
            T u = dlp::lamb_direction(p[i], m[i], v[i], inv_bc1, inv_bc2_sqrt, eps, weight_decay);
            p_sq += (double)p[i] * (double)p[i];
            u_sq += (double)u * (double)u;
        }
        sums[2 * s] = p_sq;
        sums[2 * s + 1] = u_sq;
    }
    for (i64 s = 0; s < nseg; ++s) {
        const T scale = (T)(-lr * dlp::lamb_trust(sums[2 * s], sums[2 * s + 1]));
        for (i64 i = offsets[s]; i < offsets[s + 1]; ++i) {
            T u = dlp::lamb_direction(p[i], m[i], v[i], inv_bc1, inv_bc2_sqrt, eps, weight_decay);
            p[i] = p[i] + u * scale;
        }
    }
}

template <typename T>
static void lars(T* p, const T* g, T* buf, const i64* offsets, i64 nseg, double* sums, T lr,
                 T momentum, T weight_decay, double trust_coefficient, double eps) {
    for (i64 s = 0; s < nseg; ++s) {
        double w_sq = 0.0, g_sq = 0.0;
        for (i64 i = offsets[s]; i < offsets[s + 1]; ++i) {
            w_sq += (double)p[i] * (double)p[i];
            g_sq += (double)g[i] * (double)g[i];
        }
        sums[2 * s] = w_sq;
        sums[2 * s + 1] = g_sq;
    }
    for (i64 s = 0; s < nseg; ++s) {
        const T local_lr = (T)dlp::lars_local_lr(sums[2 * s], sums[2 * s + 1], trust_coefficient,
                                                 (double)weight_decay, eps);
        for (i64 i = offsets[s]; i < offsets[s + 1]; ++i)
            dlp::lars_step(p[i], g[i], buf ? buf + i : (T*)0, lr, momentum, weight_decay,
                           local_lr);
    }
}

template <typename T>
static double norm(const T* x, i64 n, double ord, int inf) {
    double acc = 0.0;
    for (i64 i = 0; i < n; ++i)
        acc = inf ? dlp::nan_max(acc, (double)dlp::fabs_(x[i])) : acc + dlp::norm_term(x[i], ord);
    return inf ? acc : dlp::norm_finish(acc, ord);
}

template <typename T>
static void classifier_fwd(const T* x, const i64* target, i64 rows, i64 c, T one_minus_eps,
                           T eps, T* loss, T* stats) {
    for (i64 r = 0; r < rows; ++r)
        dlp::classifier_row_forward(x + r * c, c, target[r], one_minus_eps, eps, loss + r,
                                    stats + 2 * r);
}
template <typename T>
static void classifier_bwd(const T* x, const T* stats, const i64* target, const T* gy, T* gx,
                           i64 rows, i64 c, T one_minus_eps, T eps_over_c) {
    for (i64 r = 0; r < rows; ++r)
        for (i64 j = 0; j < c; ++j)
            gx[r * c + j] = dlp::classifier_grad(x[r * c + j], stats[2 * r], stats[2 * r + 1],
                                                 target[r] == j, one_minus_eps, eps_over_c, gy[r]);
}

#define DLP_EXPORT_ALL(T, SFX)                                                                   \
    extern "C" {                                                                                 \
    void act_fwd_##SFX(int op, const T* x, T* y, i64 n, T a, i64 head) {                         \
        act_fwd<T>(op, x, y, n, a, head);                                                        \
    }                                                                                            \
    void act_bwd_##SFX(int op, const T* xy, const T* gy, T* gx, i64 n, T a, i64 head) {          \
        act_bwd<T>(op, xy, gy, gx, n, a, head);                                                  \
    }                                                                                            \
    void bias_gelu_fwd_##SFX(const T* x, const T* b, T* y, i64 n, i64 h, int approx) {           \
        bias_gelu_fwd<T>(x, b, y, n, h, approx);                                                 \
    }                                                                                            \
    void bias_gelu_bwd_##SFX(const T* x, const T* b, const T* gy, T* gx, T* partial, i64 rows,   \
                             i64 h, i64 per_chunk, int approx, int warps) {                      \
        bias_gelu_bwd<T>(x, b, gy, gx, partial, rows, h, per_chunk, approx, warps);              \
    }                                                                                            \
    void dropout_apply_##SFX(const T* x, T* y, i64 n, u64 seed, u64 counter, float p, T sc) {    \
        dropout_apply<T>(x, y, n, seed, counter, p, sc);                                         \
    }                                                                                            \
    void sce_fwd_##SFX(const T* x, const i64* t, i64 rows, i64 c, T ome, T eps, T* loss,         \
                       T* probs) {                                                               \
        sce_fwd<T>(x, t, rows, c, ome, eps, loss, probs);                                        \
    }                                                                                            \
    void sce_bwd_##SFX(const T* probs, const i64* t, const T* gy, T* gx, i64 rows, i64 c, T ome, \
                       T eoc) {                                                                  \
        sce_bwd<T>(probs, t, gy, gx, rows, c, ome, eoc);                                         \
    }                                                                                            \
    void sgd_##SFX(T* p, const T* g, T* buf, i64 n, T lr, T mom, T omd, T wd, int nesterov,      \
                   int first) {                                                                  \
        sgd<T>(p, g, buf, n, lr, mom, omd, wd, nesterov, first);                                 \
    }                                                                                            \
    void adam_##SFX(T* p, const T* g, T* m, T* v, i64 n, T omb1, T b2, T omb2, T eps_hat, T wd,  \
                    T keep, T neg_alpha, int decoupled, i64 head) {                              \
        adam<T>(p, g, m, v, n, omb1, b2, omb2, eps_hat, wd, keep, neg_alpha, decoupled, head);   \
    }                                                                                            \
    void lamb_##SFX(T* p, const T* g, T* m, T* v, const i64* offsets, i64 nseg, double* sums,    \
                    double lr, T omb1, T b2, T omb2, T ibc1, T ibc2s, T eps, T wd) {             \
        lamb<T>(p, g, m, v, offsets, nseg, sums, lr, omb1, b2, omb2, ibc1, ibc2s, eps, wd);      \
    }                                                                                            \
    void lars_##SFX(T* p, const T* g, T* buf, const i64* offsets, i64 nseg, double* sums, T lr,  \
                    T mom, T wd, double tc, double eps) {                                        \
        lars<T>(p, g, buf, offsets, nseg, sums, lr, mom, wd, tc, eps);                           \
    }                                                                                            \
    double norm_##SFX(const T* x, i64 n, double ord, int inf) { return norm<T>(x, n, ord, inf); } \
    void classifier_fwd_##SFX(const T* x, const i64* t, i64 rows, i64 c, T ome, T eps, T* loss,  \
                              T* stats) {                                                        \
        classifier_fwd<T>(x, t, rows, c, ome, eps, loss, stats);                                 \
    }                                                                                            \
    void classifier_bwd_##SFX(const T* x, const T* st, const i64* t, const T* gy, T* gx,         \
                              i64 rows, i64 c, T ome, T eoc) {                                   \
        classifier_bwd<T>(x, st, t, gy, gx, rows, c, ome, eoc);                                  \
    }                                                                                            \
    }

DLP_EXPORT_ALL(float, f32)
DLP_EXPORT_ALL(double, f64)

extern "C" void splitmix64_hash_all(u64 seed, u64 counter, u64* out, i64 n) {
    for (i64 i = 0; i < n; ++i) out[i] = dlp::splitmix64_hash(seed, counter, (u64)i);
}
extern "C" void counter_uniform_all(u64 seed, u64 counter, float* out, i64 n) {
    for (i64 i = 0; i < n; ++i) out[i] = dlp::counter_uniform(seed, counter, (u64)i);
}
extern "C" void dropout_keep_all(u64 seed, u64 counter, float p, uint8_t* out, i64 n) {
    for (i64 i = 0; i < n; ++i) out[i] = dlp::dropout_keep(seed, counter, (u64)i, p) ? 1 : 0;
}
extern "C" double clip_coef(double total, double ord, double max_norm) {
    return dlp::clip_coef(total, ord, max_norm);
}
extern "C" int is_finite_f32(float x) { return dlp::is_finite(x) ? 1 : 0; }
extern "C" double quiet_nan_f64(void) { return dlp::quiet_nan<double>(); }
extern "C" float quiet_nan_f32(void) { return dlp::quiet_nan<float>(); }

// -- half precision (half.cuh): load as float, the same float math, one rounding ----------
template <typename H>
static void act_fwd_half(int op, const H* x, H* y, i64 n, float a) {
    for (i64 i = 0; i < n; ++i) y[i] = dlp::from_acc<H>(act1<float>(op, dlp::to_acc(x[i]), a));
}
template <typename H>
static void act_bwd_half(int op, const H* xy, const H* gy, H* gx, i64 n, float a) {
    for (i64 i = 0; i < n; ++i)
        gx[i] = dlp::from_acc<H>(act1_bwd<float>(op, dlp::to_acc(xy[i]), dlp::to_acc(gy[i]), a));
}
// The kernel reads each logit as float (to_acc): here a row is converted, then the float
// row function runs on it, as the block-parallel kernel runs the same formulas.
template <typename H>
static void classifier_fwd_half(const H* x, const i64* target, i64 rows, i64 c, float ome,
                                float eps, float* loss, float* stats) {
    float* row = (float*)malloc(sizeof(float) * (c > 0 ? c : 1));
    for (i64 r = 0; r < rows; ++r) {
        for (i64 j = 0; j < c; ++j) row[j] = dlp::to_acc(x[r * c + j]);
        dlp::classifier_row_forward(row, c, target[r], ome, eps, loss + r, stats + 2 * r);
    }
    free(row);
}
template <typename H>
static void classifier_bwd_half(const H* x, const float* stats, const i64* target,
                                const float* gy, H* gx, i64 rows, i64 c, float ome, float eoc) {
    for (i64 r = 0; r < rows; ++r)
        for (i64 j = 0; j < c; ++j)
            gx[r * c + j] = dlp::from_acc<H>(dlp::classifier_grad(
                dlp::to_acc(x[r * c + j]), stats[2 * r], stats[2 * r + 1], target[r] == j, ome,
                eoc, gy[r]));
}

#define DLP_EXPORT_HALF(H, SFX)                                                                  \
    extern "C" {                                                                                 \
    void to_float_##SFX(const H* x, float* y, i64 n) {                                           \
        for (i64 i = 0; i < n; ++i) y[i] = dlp::to_acc(x[i]);                                    \
    }                                                                                            \
    void from_float_##SFX(const float* x, H* y, i64 n) {                                         \
        for (i64 i = 0; i < n; ++i) y[i] = dlp::from_acc<H>(x[i]);                               \
    }                                                                                            \
    void act_fwd_##SFX(int op, const H* x, H* y, i64 n, float a) {                               \
        act_fwd_half<H>(op, x, y, n, a);                                                         \
    }                                                                                            \
    void act_bwd_##SFX(int op, const H* xy, const H* gy, H* gx, i64 n, float a) {                \
        act_bwd_half<H>(op, xy, gy, gx, n, a);                                                   \
    }                                                                                            \
    void classifier_fwd_##SFX(const H* x, const i64* t, i64 rows, i64 c, float ome, float eps,   \
                              float* loss, float* stats) {                                       \
        classifier_fwd_half<H>(x, t, rows, c, ome, eps, loss, stats);                            \
    }                                                                                            \
    void classifier_bwd_##SFX(const H* x, const float* st, const i64* t, const float* gy, H* gx, \
                              i64 rows, i64 c, float ome, float eoc) {                           \
        classifier_bwd_half<H>(x, st, t, gy, gx, rows, c, ome, eoc);                             \
    }                                                                                            \
    void bias_gelu_fwd_##SFX(const H* x, const float* b, H* y, i64 n, i64 h, int approx) {       \
        bias_gelu_fwd<H>(x, b, y, n, h, approx);                                                 \
    }                                                                                            \
    void bias_gelu_bwd_##SFX(const H* x, const float* b, const H* gy, H* gx, float* partial,     \
                             i64 rows, i64 h, i64 per_chunk, int approx, int warps) {            \
        bias_gelu_bwd<H>(x, b, gy, gx, partial, rows, h, per_chunk, approx, warps);              \
    }                                                                                            \
    void dropout_apply_##SFX(const H* x, H* y, i64 n, u64 seed, u64 counter, float p, float sc) { \
        dropout_apply<H>(x, y, n, seed, counter, p, sc);                                         \
    }                                                                                            \
    }

DLP_EXPORT_HALF(dlp::f16, f16)
DLP_EXPORT_HALF(dlp::bf16, bf16)
