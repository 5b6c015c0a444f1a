// Memory-bound glue of a transformer layer, fused so each activation is read and written
// once: SiLU·mul over the [gate | up] GEMM output, residual add + RMSNorm, and per-head
// QK RMSNorm + rotary embedding read straight out of the fused QKV GEMM output.
//
// Rounding follows the reference's half-precision op sequence: values are widened to f32,
// and rounded back to the storage type where the reference materialises a tensor.
#include "half.cuh"

// Eight 2-byte values moved as one 16-byte access.
template <typename T> struct __align__(16) Vec8 { T v[8]; };

// out[r, j] = round(round(silu(gate[r, j])) * up[r, j]) with gu = [gate | up] of [rows, 2·inter].
// inter % 8 == 0 and 16-byte aligned rows (checked by the caller). Grid: x over the row's
// 8-wide vectors, y over rows (strided, so any row count fits the grid limit).
template <typename T>
__device__ void silu_mul(const T* __restrict__ gu, T* __restrict__ out, int64_t rows, int64_t inter) {
    const int64_t c = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * 8;
    if (c >= inter) return;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const Vec8<T> g = *reinterpret_cast<const Vec8<T>*>(gu + r * 2 * inter + c);
        const Vec8<T> u = *reinterpret_cast<const Vec8<T>*>(gu + r * 2 * inter + inter + c);
        Vec8<T> o;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float x = to_f(g.v[k]);
            const float s = rnd<T>(x / (1.0f + __expf(-x)));
            o.v[k] = from_f<T>(s * to_f(u.v[k]));
        }
        *reinterpret_cast<Vec8<T>*>(out + r * inter + c) = o;
    }
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// Block-wide sum; every thread gets the result. `shared` holds one float per warp.
__device__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    float t = 0.f;
    for (int w = 0; w < warps; ++w) t += shared[w];
    return t;
}

// One block per row of width `dim` (dim % 8 == 0). With `y`: s = round(x + y) is written to
// `sum_out` and normalised; without: x itself is normalised. `after_cast` selects
// round(round(s·inv)·w) (weight applied in the storage type) over round(s·inv·w).
// With blockDim.x·8 == dim (the launcher's choice when dim/8 ≤ 1024) each thread keeps its
// eight values in registers between the two passes; otherwise the second pass re-reads them.
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                             T* __restrict__ sum_out, T* __restrict__ out, int64_t dim, float eps,
                             int after_cast) {
    __shared__ float shared[32];
    const int64_t row = blockIdx.x;
    const T* xr = x + row * dim;
    const T* yr = y ? y + row * dim : nullptr;
    T* sr = sum_out ? sum_out + row * dim : nullptr;
    T* orow = out + row * dim;
    const bool resident = (int64_t)blockDim.x * 8 == dim;
    Vec8<T> keep;
    float sq = 0.f;
    for (int64_t c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        Vec8<T> a = *reinterpret_cast<const Vec8<T>*>(xr + c);
        if (yr) {
            const Vec8<T> b = *reinterpret_cast<const Vec8<T>*>(yr + c);
#pragma unroll
            for (int k = 0; k < 8; ++k) a.v[k] = from_f<T>(to_f(a.v[k]) + to_f(b.v[k]));
            *reinterpret_cast<Vec8<T>*>(sr + c) = a;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float f = to_f(a.v[k]);
            sq += f * f;
        }
        keep = a;
    }
    const float inv = rsqrtf(block_sum(sq, shared) / (float)dim + eps);
    const T* src = yr ? sr : xr;
    for (int64_t c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        const Vec8<T> a = resident ? keep : *reinterpret_cast<const Vec8<T>*>(src + c);
        const Vec8<T> g = *reinterpret_cast<const Vec8<T>*>(w + c);
        Vec8<T> o;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float n = to_f(a.v[k]) * inv;
            o.v[k] = after_cast ? from_f<T>(rnd<T>(n) * to_f(g.v[k])) : from_f<T>(n * to_f(g.v[k]));
        }
        *reinterpret_cast<Vec8<T>*>(orow + c) = o;
    }
}

// qkv [tokens, hq + 2·hkv, D] → out [tokens, hq + hkv, D]: for each of the first hq + hkv
// heads, optional RMSNorm over D (weights wq for query heads, wk for key heads), then
// rotate-half rotary embedding with cos/sin [tokens, D/2]. One warp per (token, head); lane
// l holds D/32 contiguous elements, and its rotation partner (element i ± D/2) sits in lane
// l ^ 16. D % 64 == 0, D <= 256. The rotation is computed in f32 from the normalised value
// and rounded once.
template <typename T>
__device__ void qk_norm_rope(const T* __restrict__ qkv, const T* __restrict__ wq, const T* __restrict__ wk,
                             const T* __restrict__ cosv, const T* __restrict__ sinv, T* __restrict__ out,
                             int64_t tokens, int hq, int hkv, int d, float eps, int norm, int after_cast) {
    const int lane = threadIdx.x & 31;
    const int64_t item = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    const int heads = hq + hkv;
    if (item >= tokens * heads) return;
    const int64_t n = item / heads;
    const int h = (int)(item % heads);
    const int half = d / 2, per = d / 32;
    const int i0 = lane * per;                 // first element of this lane
    const bool first = i0 < half;              // first or second half of the head
    const T* src = qkv + (n * (hq + 2 * hkv) + h) * d;
    const T* w = h < hq ? wq : wk;
    float v[8];
    float sq = 0.f;
    for (int k = 0; k < per; ++k) {
        v[k] = to_f(src[i0 + k]);
        sq += v[k] * v[k];
    }
    if (norm) {
        const float inv = rsqrtf(warp_sum(sq) / (float)d + eps);
        for (int k = 0; k < per; ++k) {
            const float g = to_f(w[i0 + k]);
            v[k] = after_cast ? rnd<T>(rnd<T>(v[k] * inv) * g) : rnd<T>(v[k] * inv * g);
        }
    }
    const int j0 = first ? i0 : i0 - half;     // index into cos/sin
    T* dst = out + (n * heads + h) * d;
    for (int k = 0; k < per; ++k) {
        const float other = __shfl_xor_sync(0xffffffffu, v[k], 16);
        const float c = to_f(cosv[n * half + j0 + k]), s = to_f(sinv[n * half + j0 + k]);
        // first half: x1·c − x2·s; second half: x2·c + x1·s.
        dst[i0 + k] = from_f<T>(first ? v[k] * c - other * s : v[k] * c + other * s);
    }
}

#define GLUE(T, SUFFIX)                                                                            \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gu, T* out, int64_t rows, int64_t inter) { \
        silu_mul<T>(gu, out, rows, inter);                                                         \
    }                                                                                              \
    extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, const T* y, const T* w, T* sum_out, \
                                                     T* out, int64_t dim, float eps, int after_cast) { \
        add_rms_norm<T>(x, y, w, sum_out, out, dim, eps, after_cast);                              \
    }                                                                                              \
    extern "C" __global__ void qk_norm_rope_##SUFFIX(const T* qkv, const T* wq, const T* wk,        \
                                                     const T* cosv, const T* sinv, T* out,         \
                                                     int64_t tokens, int hq, int hkv, int d,       \
                                                     float eps, int norm, int after_cast) {        \
        qk_norm_rope<T>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, d, eps, norm, after_cast);  \
    }

GLUE(__nv_bfloat16, bf16)
GLUE(__half, f16)
