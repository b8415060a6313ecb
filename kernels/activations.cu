// Elementwise activation kernels: forward and backward of ReLU, Leaky ReLU, ELU,
// GELU (erf and tanh), SiLU, sigmoid and tanh, and the fused bias + GELU.
// Instantiated for float and double, and all of them also for __half and
// __nv_bfloat16 storage with float math inside (half.cuh: load with to_acc, compute in
// acc_t<T>, round once on the store). The math is in activations.cuh.
#include "activations.cuh"
#include "half.cuh"
#include "reduce.cuh"

#include "vector.cuh"

// Every elementwise kernel reads and writes 16 bytes at a time between a scalar head
// and tail (vector.cuh); `head` comes from the host (CUDABackend._head).
#define DLP_TID ((long long)blockIdx.x * blockDim.x + threadIdx.x)
#define DLP_STRIDE ((long long)blockDim.x * gridDim.x)
#define DLP_UNARY_BODY(EXPR)                                                              \
    DLP_PACKED_LOOP(T, n, head, DLP_TID, DLP_STRIDE,                                      \
                    { const dlp::acc_t<T> xi = dlp::to_acc(x[i]); y[i] = dlp::from_acc<T>(EXPR); }, { \
        const dlp::Pack<T> xv = dlp::load_pack(x + i);                                  \
        dlp::Pack<T> yv;                                                                \
        _Pragma("unroll") for (int j = 0; j < dlp::Pack<T>::size; ++j) {                \
            const T xi = xv.v[j];                                                       \
            yv.v[j] = EXPR;                                                             \
        }                                                                               \
        dlp::store_pack(y + i, yv);                                                     \
    })
#define DLP_BINARY_BODY(EXPR)                                                             \
    DLP_PACKED_LOOP(T, n, head, DLP_TID, DLP_STRIDE,                                      \
                    { const dlp::acc_t<T> xi = dlp::to_acc(x[i]);                         \
                      const dlp::acc_t<T> gi = dlp::to_acc(gy[i]);                        \
                      gx[i] = dlp::from_acc<T>(EXPR); }, {                                \
        const dlp::Pack<T> xv = dlp::load_pack(x + i);                                  \
        const dlp::Pack<T> gv = dlp::load_pack(gy + i);                                 \
        dlp::Pack<T> ov;                                                                \
        _Pragma("unroll") for (int j = 0; j < dlp::Pack<T>::size; ++j) {                \
            const T xi = xv.v[j];                                                       \
            const T gi = gv.v[j];                                                       \
            ov.v[j] = EXPR;                                                             \
        }                                                                               \
        dlp::store_pack(gx + i, ov);                                                    \
    })
#define DLP_UNARY(NAME, EXPR)                                                             \
    template <typename T>                                                                \
    __global__ void NAME(const T* __restrict__ x, T* __restrict__ y, long long n,        \
                         long long head) {                                               \
        DLP_UNARY_BODY(EXPR)                                                             \
    }
#define DLP_UNARY_P(NAME, EXPR)                                                           \
    template <typename T>                                                                \
    __global__ void NAME(const T* __restrict__ x, T* __restrict__ y, long long n,        \
                         long long head, dlp::acc_t<T> a) {                              \
        DLP_UNARY_BODY(EXPR)                                                             \
    }
#define DLP_BINARY(NAME, EXPR)                                                            \
    template <typename T>                                                                \
    __global__ void NAME(const T* __restrict__ x, const T* __restrict__ gy,              \
                         T* __restrict__ gx, long long n, long long head) {              \
        DLP_BINARY_BODY(EXPR)                                                            \
    }
#define DLP_BINARY_P(NAME, EXPR)                                                          \
    template <typename T>                                                                \
    __global__ void NAME(const T* __restrict__ x, const T* __restrict__ gy,              \
                         T* __restrict__ gx, long long n, long long head,                \
                         dlp::acc_t<T> a) {                                              \
        DLP_BINARY_BODY(EXPR)                                                            \
    }

// For relu/sigmoid/tanh backward the first argument is the output y.
DLP_UNARY(relu_forward, dlp::relu_fwd(xi))
DLP_BINARY(relu_backward, dlp::relu_bwd(xi, gi))
DLP_UNARY_P(leaky_relu_forward, dlp::leaky_relu_fwd(xi, a))
DLP_BINARY_P(leaky_relu_backward, dlp::leaky_relu_bwd(xi, gi, a))
DLP_UNARY_P(elu_forward, dlp::elu_fwd(xi, a))
DLP_BINARY_P(elu_backward, dlp::elu_bwd(xi, gi, a))
DLP_UNARY(gelu_erf_forward, dlp::gelu_erf_fwd(xi))
DLP_BINARY(gelu_erf_backward, dlp::gelu_erf_bwd(xi, gi))
DLP_UNARY(gelu_tanh_forward, dlp::gelu_tanh_fwd(xi))
DLP_BINARY(gelu_tanh_backward, dlp::gelu_tanh_bwd(xi, gi))
DLP_UNARY(silu_forward, dlp::silu_fwd(xi))
DLP_BINARY(silu_backward, dlp::silu_bwd(xi, gi))
DLP_UNARY(sigmoid_forward, dlp::sigmoid_fwd(xi))
DLP_BINARY(sigmoid_backward, dlp::sigmoid_bwd(xi, gi))
DLP_UNARY(tanh_forward, dlp::tanh_fwd(xi))
DLP_BINARY(tanh_backward, dlp::tanh_bwd(xi, gi))

// gelu(x + b) with b broadcast over the last axis (h = its length): one read of x,
// one write of y, where separate ops would write and re-read x + b.
// The column index advances with the grid stride (one modulo per thread, not per element).
#define DLP_BIAS_LOOP(i, col, n, h)                                                  \
    const long long dlp_stride = (long long)blockDim.x * gridDim.x;                  \
    const long long dlp_step = dlp_stride % (h);                                     \
    long long col = ((long long)blockIdx.x * blockDim.x + threadIdx.x) % (h);        \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n);     \
         i += dlp_stride, col = (col + dlp_step >= (h)) ? col + dlp_step - (h) : col + dlp_step)

// The bias is in the math type acc_t<T> (float for half x: a float32 parameter under
// autocast), so x + b and the GELU run in float and y is rounded once.
template <typename T>
__global__ void bias_gelu_forward(const T* __restrict__ x, const dlp::acc_t<T>* __restrict__ b,
                                  T* __restrict__ y, long long n, long long h, int approx_tanh) {
    DLP_BIAS_LOOP(i, col, n, h)
        y[i] = dlp::from_acc<T>(dlp::gelu_fwd(dlp::to_acc(x[i]) + b[col], approx_tanh));
}
// gx and the bias gradient in one pass: a block takes a tile of 32 columns (a warp's
// lane each, so every row segment is one coalesced 128-byte read) over a chunk of rows
// (one warp per row, strided), sums gx down its columns in registers, reduces the
// block's warps in shared memory and writes one partial per column and chunk:
// partial[chunk * h + col]. gb is those few rows summed (rows / rows_per_chunk of them),
// so gx is never read again. For half x the bias, the sums and the partials are float
// (acc_t<T>): gb adds the unrounded float gx, and only gx is rounded, once, on its store.
template <typename T>
__global__ void bias_gelu_backward(const T* __restrict__ x, const dlp::acc_t<T>* __restrict__ b,
                                   const T* __restrict__ gy, T* __restrict__ gx,
                                   dlp::acc_t<T>* __restrict__ partial, long long rows,
                                   long long h, long long rows_per_chunk, int approx_tanh) {
    typedef dlp::acc_t<T> A;
    __shared__ A sums[32][33];
    const long long tiles = (h + 31) / 32;
    const long long tile = blockIdx.x % tiles, chunk = blockIdx.x / tiles;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const long long col = tile * 32 + lane;
    const long long r0 = chunk * rows_per_chunk;
    const long long r1 = min(rows, r0 + rows_per_chunk);
    A acc = A(0);
    if (col < h) {
        const A bc = b[col];
        for (long long r = r0 + warp; r < r1; r += warps) {
            const long long i = r * h + col;
            const A g = dlp::gelu_bwd(dlp::to_acc(x[i]) + bc, dlp::to_acc(gy[i]), approx_tanh);
            gx[i] = dlp::from_acc<T>(g);
            acc += g;
        }
    }
    sums[warp][lane] = acc;
    __syncthreads();
    if (warp == 0) {
        for (int w = 1; w < warps; ++w) acc += sums[w][lane];
        if (col < h) partial[chunk * h + col] = acc;
    }
}
