// CUDA kernels of llm::ops (compiled to PTX by build.rs with nvcc when the `cuda` feature is
// on): the fused training ops with their backward passes, and the multi-tensor AdamW step.
// Every kernel computes in f32; `_f32` / `_bf16` suffixes name the storage type.

#include <cuda_bf16.h>
#include <stdint.h>

// ------------------------------------------------------------------ helpers

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) {
    return __float2bfloat16(x);
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024), returned to every thread.
__device__ float block_sum(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        float s = lane < nw ? part[lane] : 0.f;
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        if (lane == 0) total = s;
    }
    __syncthreads();
    const float out = total;
    __syncthreads();
    return out;
}

__device__ float block_max(float v) {
    __shared__ float part[32];
    __shared__ float total;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        const int nw = blockDim.x >> 5;
        float s = lane < nw ? part[lane] : -INFINITY;
        for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, o));
        if (lane == 0) total = s;
    }
    __syncthreads();
    const float out = total;
    __syncthreads();
    return out;
}

// ------------------------------------------------------------------ RMSNorm
// y = x * r * w, r = 1 / sqrt(mean(x^2) + eps); one block per row.
template <typename T>
__device__ void rms_norm_fwd(const T* x, const T* w, T* y, int d, float eps) {
    const T* xr = x + (size_t)blockIdx.x * d;
    T* yr = y + (size_t)blockIdx.x * d;
    float ss = 0.f;
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        const float v = to_f(xr[j]);
        ss += v * v;
    }
    const float r = rsqrtf(block_sum(ss) / d + eps);
    for (int j = threadIdx.x; j < d; j += blockDim.x) yr[j] = from_f<T>(to_f(xr[j]) * r * to_f(w[j]));
}

// dx = r * g * w - x * r^3 * sum(g * w * x) / d per row; each block takes `rows_per_block`
// rows and writes its partial dw (f32) to dw_part[blockIdx.x * d ..]. d <= 8 * blockDim.x.
template <typename T>
__device__ void rms_norm_bwd(const T* x, const T* w, const T* g, T* dx, float* dw_part, int rows,
                             int d, int rows_per_block, float eps) {
    float acc[8];
    for (int i = 0; i < 8; ++i) acc[i] = 0.f;
    const int r0 = blockIdx.x * rows_per_block;
    const int r1 = min(rows, r0 + rows_per_block);
    for (int row = r0; row < r1; ++row) {
        const T* xr = x + (size_t)row * d;
        const T* gr = g + (size_t)row * d;
        float ss = 0.f, dot = 0.f;
        for (int j = threadIdx.x; j < d; j += blockDim.x) {
            const float xv = to_f(xr[j]);
            ss += xv * xv;
            dot += to_f(gr[j]) * to_f(w[j]) * xv;
        }
        const float r = rsqrtf(block_sum(ss) / d + eps);
        const float c = r * r * r * block_sum(dot) / d;
        int i = 0;
        for (int j = threadIdx.x; j < d; j += blockDim.x, ++i) {
            const float xv = to_f(xr[j]), gv = to_f(gr[j]);
            dx[(size_t)row * d + j] = from_f<T>(r * gv * to_f(w[j]) - xv * c);
            acc[i] += gv * xv * r;
        }
    }
    int i = 0;
    for (int j = threadIdx.x; j < d; j += blockDim.x, ++i) dw_part[(size_t)blockIdx.x * d + j] = acc[i];
}

// out[j] = sum over parts of part[p * d + j], in part order (deterministic).
template <typename T>
__device__ void col_sum(const float* part, T* out, int parts, int d) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= d) return;
    float s = 0.f;
    for (int p = 0; p < parts; ++p) s += part[(size_t)p * d + j];
    out[j] = from_f<T>(s);
}

// ------------------------------------------------------------------ RoPE (rotate half)
// x [b, h, t, hd] -> y [b, h, t, hd] rotated by cos/sin [t, hd/2] (or [b, t, hd/2] when
// per_row); `inverse` rotates back (the gradient: a rotation's transpose is its inverse).
template <typename T>
__device__ void rope(const T* src, const T* cos, const T* sin, T* dst, int b, int t, int h,
                     int hd, int per_row, int inverse) {
    const int half = hd / 2;
    const size_t n = (size_t)b * h * t * half;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        const int j = e % half;
        const size_t rest = e / half;
        const int p = rest % t;
        const int bi = rest / ((size_t)t * h);
        const size_t tab = ((per_row ? (size_t)bi * t : 0) + p) * half + j;
        const float c = to_f(cos[tab]);
        const float s = inverse ? -to_f(sin[tab]) : to_f(sin[tab]);
        const size_t o = rest * hd;  // row (bi, head, p) of [b, h, t, hd]
        const float x1 = to_f(src[o + j]), x2 = to_f(src[o + j + half]);
        dst[o + j] = from_f<T>(x1 * c - x2 * s);
        dst[o + j + half] = from_f<T>(x2 * c + x1 * s);
    }
}

// ------------------------------------------------------------------ causal softmax
// Rows of att [b, kv, n_rep * t, kv_len]: row r (query i = r % t) sees keys j <= past + i with
// valid[b, j] != 0; one block per row. Rows without a visible key are zeros.
template <typename T>
__device__ void causal_softmax_fwd(const T* x, const uint8_t* valid, T* y, int kv_len, int t,
                                   int past, int rows_per_batch, float scale) {
    const size_t row = blockIdx.x;
    const int bi = row / rows_per_batch;
    const int i = row % t;
    const int limit = min(past + i + 1, kv_len);
    const T* xr = x + row * kv_len;
    T* yr = y + row * kv_len;
    const uint8_t* vm = valid + (size_t)bi * kv_len;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < limit; j += blockDim.x)
        if (vm[j]) m = fmaxf(m, to_f(xr[j]) * scale);
    m = block_max(m);
    float s = 0.f;
    for (int j = threadIdx.x; j < limit; j += blockDim.x)
        if (vm[j]) s += __expf(to_f(xr[j]) * scale - m);
    s = block_sum(s);
    const float inv = (m == -INFINITY || s == 0.f) ? 0.f : 1.f / s;
    for (int j = threadIdx.x; j < kv_len; j += blockDim.x) {
        const bool on = j < limit && vm[j] && inv > 0.f;
        yr[j] = from_f<T>(on ? __expf(to_f(xr[j]) * scale - m) * inv : 0.f);
    }
}

// dx = scale * y * (g - sum(g * y)) per row.
template <typename T>
__device__ void softmax_bwd(const T* y, const T* g, T* dx, int cols, float scale) {
    const size_t o = (size_t)blockIdx.x * cols;
    float dot = 0.f;
    for (int j = threadIdx.x; j < cols; j += blockDim.x) dot += to_f(g[o + j]) * to_f(y[o + j]);
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < cols; j += blockDim.x)
        dx[o + j] = from_f<T>(scale * to_f(y[o + j]) * (to_f(g[o + j]) - dot));
}

// ------------------------------------------------------------------ SiLU x up
template <typename T>
__device__ void silu_mul_fwd(const T* g, const T* u, T* y, size_t n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        const float x = to_f(g[e]);
        y[e] = from_f<T>(x / (1.f + __expf(-x)) * to_f(u[e]));
    }
}

// dg = grad * u * sig * (1 + g * (1 - sig)), du = grad * silu(g); out = [dg; du].
template <typename T>
__device__ void silu_mul_bwd(const T* g, const T* u, const T* grad, T* out, size_t n) {
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < n;
         e += (size_t)gridDim.x * blockDim.x) {
        const float x = to_f(g[e]), up = to_f(u[e]), gr = to_f(grad[e]);
        const float sig = 1.f / (1.f + __expf(-x));
        out[e] = from_f<T>(gr * up * sig * (1.f + x * (1.f - sig)));
        out[n + e] = from_f<T>(gr * x * sig);
    }
}

// ------------------------------------------------------------------ cross-entropy
// Per row of logits [n, vocab]: lse and loss = lse - logit[target]; one block per row.
template <typename T>
__device__ void ce_fwd(const T* logits, const uint32_t* targets, float* loss, float* lse, int vocab) {
    const T* l = logits + (size_t)blockIdx.x * vocab;
    float m = -INFINITY;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) m = fmaxf(m, to_f(l[j]));
    m = block_max(m);
    float s = 0.f;
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) s += __expf(to_f(l[j]) - m);
    s = block_sum(s);
    if (threadIdx.x == 0) {
        const float z = m + logf(s);
        lse[blockIdx.x] = z;
        loss[blockIdx.x] = z - to_f(l[targets[blockIdx.x]]);
    }
}

// dlogits = g * (softmax - onehot(target)), g the loss gradient (a device scalar).
template <typename T>
__device__ void ce_bwd(const T* logits, const uint32_t* targets, const float* lse, const float* g,
                       T* dl, int vocab) {
    const size_t o = (size_t)blockIdx.x * vocab;
    const float z = lse[blockIdx.x], gs = g[0];
    const uint32_t tgt = targets[blockIdx.x];
    for (int j = threadIdx.x; j < vocab; j += blockDim.x) {
        const float p = __expf(to_f(logits[o + j]) - z);
        dl[o + j] = from_f<T>(gs * (p - (j == (int)tgt ? 1.f : 0.f)));
    }
}

// ------------------------------------------------------------------ embedding
template <typename T>
__device__ void embedding_fwd(const T* w, const uint32_t* ids, T* out, int n, int d) {
    const size_t total = (size_t)n * d;
    for (size_t e = blockIdx.x * (size_t)blockDim.x + threadIdx.x; e < total;
         e += (size_t)gridDim.x * blockDim.x) {
        const size_t p = e / d;
        out[e] = w[(size_t)ids[p] * d + e % d];
    }
}

// dw[ids[k]] = sum of g rows at positions pos[offs[k] .. offs[k + 1]]: one block per distinct
// token (parallel over tokens, each row written by one block in position order, so the sums
// are deterministic). dw is zeroed by the caller.
template <typename T>
__device__ void embedding_bwd(const T* g, const uint32_t* ids, const uint32_t* offs,
                              const uint32_t* pos, T* dw, int d) {
    const uint32_t id = ids[blockIdx.x];
    const uint32_t a = offs[blockIdx.x], b = offs[blockIdx.x + 1];
    for (int j = threadIdx.x; j < d; j += blockDim.x) {
        float s = 0.f;
        for (uint32_t k = a; k < b; ++k) s += to_f(g[(size_t)pos[k] * d + j]);
        dw[(size_t)id * d + j] = from_f<T>(s);
    }
}

// ------------------------------------------------------------------ entry points
#define INSTANTIATE(T, S)                                                                         \
    extern "C" __global__ void rms_norm_fwd_##S(const T* x, const T* w, T* y, int d, float eps) { \
        rms_norm_fwd<T>(x, w, y, d, eps);                                                         \
    }                                                                                             \
    extern "C" __global__ void rms_norm_bwd_##S(const T* x, const T* w, const T* g, T* dx,        \
                                                float* part, int rows, int d, int rpb, float eps) { \
        rms_norm_bwd<T>(x, w, g, dx, part, rows, d, rpb, eps);                                    \
    }                                                                                             \
    extern "C" __global__ void col_sum_##S(const float* part, T* out, int parts, int d) {         \
        col_sum<T>(part, out, parts, d);                                                          \
    }                                                                                             \
    extern "C" __global__ void rope_##S(const T* src, const T* cos, const T* sin, T* dst, int b,  \
                                        int t, int h, int hd, int per_row, int inverse) {         \
        rope<T>(src, cos, sin, dst, b, t, h, hd, per_row, inverse);                               \
    }                                                                                             \
    extern "C" __global__ void causal_softmax_fwd_##S(const T* x, const uint8_t* valid, T* y,     \
                                                      int kv_len, int t, int past, int rpb,       \
                                                      float scale) {                              \
        causal_softmax_fwd<T>(x, valid, y, kv_len, t, past, rpb, scale);                          \
    }                                                                                             \
    extern "C" __global__ void softmax_bwd_##S(const T* y, const T* g, T* dx, int cols,           \
                                               float scale) {                                     \
        softmax_bwd<T>(y, g, dx, cols, scale);                                                    \
    }                                                                                             \
    extern "C" __global__ void silu_mul_fwd_##S(const T* g, const T* u, T* y, size_t n) {         \
        silu_mul_fwd<T>(g, u, y, n);                                                              \
    }                                                                                             \
    extern "C" __global__ void silu_mul_bwd_##S(const T* g, const T* u, const T* grad, T* out,    \
                                                size_t n) {                                       \
        silu_mul_bwd<T>(g, u, grad, out, n);                                                      \
    }                                                                                             \
    extern "C" __global__ void ce_fwd_##S(const T* logits, const uint32_t* targets, float* loss,  \
                                          float* lse, int vocab) {                                \
        ce_fwd<T>(logits, targets, loss, lse, vocab);                                             \
    }                                                                                             \
    extern "C" __global__ void ce_bwd_##S(const T* logits, const uint32_t* targets,               \
                                          const float* lse, const float* g, T* dl, int vocab) {   \
        ce_bwd<T>(logits, targets, lse, g, dl, vocab);                                            \
    }                                                                                             \
    extern "C" __global__ void embedding_fwd_##S(const T* w, const uint32_t* ids, T* out, int n,  \
                                                 int d) {                                         \
        embedding_fwd<T>(w, ids, out, n, d);                                                      \
    }                                                                                             \
    extern "C" __global__ void embedding_bwd_##S(const T* g, const uint32_t* ids,                 \
                                                 const uint32_t* offs, const uint32_t* pos,       \
                                                 T* dw, int d) {                                  \
        embedding_bwd<T>(g, ids, offs, pos, dw, d);                                               \
    }

INSTANTIATE(float, f32)
INSTANTIATE(__nv_bfloat16, bf16)

// A scalar: the sum of `n` floats, in order (one block).
extern "C" __global__ void sum_f32(const float* x, float* out, int n) {
    float s = 0.f;
    for (int j = threadIdx.x; j < n; j += blockDim.x) s += x[j];
    s = block_sum(s);
    if (threadIdx.x == 0) out[0] = s;
}

// ------------------------------------------------------------------ multi-tensor AdamW
// The parameters form one virtual array of `total` floats: parameter p covers
// [offsets[p], offsets[p + 1]); its weights and gradient live at w_ptrs[p] and g_ptrs[p], its
// moments at the same offsets of the flat m and v. Each block takes CHUNK consecutive
// elements.
#define CHUNK 4096

__device__ __forceinline__ int param_of(const int64_t* offsets, int n_params, int64_t i) {
    int lo = 0, hi = n_params;  // offsets[lo] <= i < offsets[hi]
    while (hi - lo > 1) {
        const int mid = (lo + hi) >> 1;
        if (offsets[mid] <= i) lo = mid; else hi = mid;
    }
    return lo;
}

// partial[block] = sum of squares of the gradients in the block's chunk (f64).
extern "C" __global__ void adamw_sumsq(const uint64_t* g_ptrs, const int64_t* offsets,
                                       int n_params, int64_t total, double* partial) {
    __shared__ double part[32];
    const int64_t a = (int64_t)blockIdx.x * CHUNK, b = min(total, a + CHUNK);
    double s = 0.0;
    for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x) {
        const int p = param_of(offsets, n_params, i);
        const float v = ((const float*)g_ptrs[p])[i - offsets[p]];
        s += (double)v * (double)v;
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
        double t = 0.0;
        for (int w = 0; w < (int)(blockDim.x >> 5); ++w) t += part[w];
        partial[blockIdx.x] = t;
    }
}

// out[0] = the squared global norm (partials summed in order), scale[0] = the clip factor.
extern "C" __global__ void adamw_norm(const double* partial, int parts, double* out, float* scale,
                                      float max_norm) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    double s = 0.0;
    for (int p = 0; p < parts; ++p) s += partial[p];
    out[0] = s;
    const double norm = sqrt(s);
    scale[0] = (max_norm > 0.f && norm > max_norm) ? (float)(max_norm / (norm + 1e-6)) : 1.f;
}

// The update of llm::optim::AdamW (decoupled decay), gradients times scale[0] first.
extern "C" __global__ void adamw_step(const uint64_t* w_ptrs, const uint64_t* g_ptrs,
                                      const int64_t* offsets, const float* decay, int n_params,
                                      int64_t total, float* m, float* v, const float* scale,
                                      float lr, float b1, float b2, float eps, float bc1, float bc2) {
    const int64_t a = (int64_t)blockIdx.x * CHUNK, b = min(total, a + CHUNK);
    const float s = scale[0];
    for (int64_t i = a + threadIdx.x; i < b; i += blockDim.x) {
        const int p = param_of(offsets, n_params, i);
        const int64_t j = i - offsets[p];
        float* w = (float*)w_ptrs[p];
        const float g = ((const float*)g_ptrs[p])[j] * s;
        const float mj = b1 * m[i] + (1.f - b1) * g;
        const float vj = b2 * v[i] + (1.f - b2) * g * g;
        const float upd = (mj / bc1) / (sqrtf(vj / bc2) + eps);
        w[j] = w[j] * decay[p] - lr * upd;
        m[i] = mj;
        v[i] = vj;
    }
}
