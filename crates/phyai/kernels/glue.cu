// Memory-bound glue of a transformer layer, fused so each activation is read and written
// once: SiLU·mul over the [gate | up] GEMM output, residual add + RMSNorm, and per-head
// QK RMSNorm + rotary embedding read straight out of the fused QKV GEMM output.
//
// Rounding follows the reference's half-precision op sequence: values are widened to f32,
// and rounded back to the storage type where the reference materialises a tensor.
#include "half.cuh"

// Eight 2-byte values moved as one 16-byte access.
template <typename T> struct __align__(16) Vec8 { T v[8]; };

// Folds a thread's max|value| into *amax (zeroed by the caller) for the FP8 quantization of
// the kernel's output: the warp's max, then one atomic from lane 0, only when it exceeds
// what *amax already holds (non-negative floats order like their bit patterns). Every lane
// of the warp must call it.
__device__ __forceinline__ void warp_amax(float m, float* amax) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    if ((threadIdx.x & 31) == 0 && m > __ldcg(amax))
        atomicMax(reinterpret_cast<unsigned int*>(amax), __float_as_uint(m));
}

// out[r, j] = round(round(silu(gate[r, j])) * up[r, j]) with gu = [gate | up] of [rows, 2·inter].
// inter % 8 == 0 and 16-byte aligned rows (checked by the caller). Grid: x over the row's
// 8-wide vectors, y over rows (strided, so any row count fits the grid limit). With `amax`,
// also max|out| into it.
template <typename T>
__device__ void silu_mul(const T* __restrict__ gu, T* __restrict__ out, int64_t rows, int64_t inter,
                         float* __restrict__ amax) {
    const int64_t c = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) * 8;
    float m = 0.f;
    if (c < inter) {
        for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
            const Vec8<T> g = *reinterpret_cast<const Vec8<T>*>(gu + r * 2 * inter + c);
            const Vec8<T> u = *reinterpret_cast<const Vec8<T>*>(gu + r * 2 * inter + inter + c);
            Vec8<T> o;
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const float x = to_f(g.v[k]);
                const float s = rnd<T>(x / (1.0f + __expf(-x)));
                o.v[k] = from_f<T>(s * to_f(u.v[k]));
                m = fmaxf(m, fabsf(to_f(o.v[k])));
            }
            *reinterpret_cast<Vec8<T>*>(out + r * inter + c) = o;
        }
    }
    if (amax) warp_amax(m, amax);
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
// With `amax`, also max|norm| into it.
template <typename T>
__device__ void add_rms_norm(const T* __restrict__ x, const T* __restrict__ y, const T* __restrict__ w,
                             T* __restrict__ sum_out, T* __restrict__ out, int64_t dim, float eps,
                             int after_cast, float* __restrict__ amax) {
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
    float m = 0.f;
    for (int64_t c = threadIdx.x * 8; c < dim; c += blockDim.x * 8) {
        const Vec8<T> a = resident ? keep : *reinterpret_cast<const Vec8<T>*>(src + c);
        const Vec8<T> g = *reinterpret_cast<const Vec8<T>*>(w + c);
        Vec8<T> o;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const float n = to_f(a.v[k]) * inv;
            o.v[k] = after_cast ? from_f<T>(rnd<T>(n) * to_f(g.v[k])) : from_f<T>(n * to_f(g.v[k]));
            m = fmaxf(m, fabsf(to_f(o.v[k])));
        }
        *reinterpret_cast<Vec8<T>*>(orow + c) = o;
    }
    if (amax) warp_amax(m, amax);
}

// qkv [tokens, hq + 2·hkv, D] → out [tokens, hq + hkv, D]: for each of the first hq + hkv
// heads, optional RMSNorm over D (weights wq for query heads, wk for key heads), then
// rotate-half rotary embedding with cos/sin [tokens, D/2]. One warp per (token, head); lane
// l holds D/32 contiguous elements, and its rotation partner (element i ± D/2) sits in lane
// l ^ 16. D % 64 == 0, D <= 256, every pointer 16-byte aligned. The rotation is computed in
// f32 from the normalised value and rounded once.
// A lane's PER contiguous elements, moved with one load or store (12 bytes: three).
template <typename T, int PER>
struct alignas(PER * sizeof(T) == 12 ? 4 : PER * sizeof(T)) Lanes {
    T v[PER];
};

template <typename T, int PER>
__device__ void qk_norm_rope_lanes(const T* __restrict__ qkv, const T* __restrict__ wq,
                                   const T* __restrict__ wk, const T* __restrict__ cosv,
                                   const T* __restrict__ sinv, T* __restrict__ out,
                                   int64_t tokens, int hq, int hkv, float eps, int norm,
                                   int after_cast) {
    using L = Lanes<T, PER>;
    const int d = 32 * PER, half = d / 2;
    const int lane = threadIdx.x & 31;
    const int64_t item = (blockIdx.x * (int64_t)blockDim.x + threadIdx.x) >> 5;
    const int heads = hq + hkv;
    if (item >= tokens * heads) return;
    const int64_t n = item / heads;
    const int h = (int)(item % heads);
    const int i0 = lane * PER;                 // first element of this lane
    const bool first = i0 < half;              // first or second half of the head
    const L x = *reinterpret_cast<const L*>(qkv + (n * (hq + 2 * hkv) + h) * d + i0);
    float v[PER];
    float sq = 0.f;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
        v[k] = to_f(x.v[k]);
        sq += v[k] * v[k];
    }
    if (norm) {
        const float inv = rsqrtf(warp_sum(sq) / (float)d + eps);
        const L g = *reinterpret_cast<const L*>((h < hq ? wq : wk) + i0);
#pragma unroll
        for (int k = 0; k < PER; ++k) {
            const float gk = to_f(g.v[k]);
            v[k] = after_cast ? rnd<T>(rnd<T>(v[k] * inv) * gk) : rnd<T>(v[k] * inv * gk);
        }
    }
    const int j0 = first ? i0 : i0 - half;     // index into cos/sin
    const L c = *reinterpret_cast<const L*>(cosv + n * half + j0);
    const L s = *reinterpret_cast<const L*>(sinv + n * half + j0);
    L o;
#pragma unroll
    for (int k = 0; k < PER; ++k) {
        const float other = __shfl_xor_sync(0xffffffffu, v[k], 16);
        const float ck = to_f(c.v[k]), sk = to_f(s.v[k]);
        // first half: x1·c − x2·s; second half: x2·c + x1·s.
        o.v[k] = from_f<T>(first ? v[k] * ck - other * sk : v[k] * ck + other * sk);
    }
    *reinterpret_cast<L*>(out + (n * heads + h) * d + i0) = o;
}

// The lane width for D (D % 64 == 0, D <= 256): each lane moves its elements in one access,
// so a warp reads and writes a head's row in whole contiguous transactions.
template <typename T>
__device__ void qk_norm_rope(const T* __restrict__ qkv, const T* __restrict__ wq, const T* __restrict__ wk,
                             const T* __restrict__ cosv, const T* __restrict__ sinv, T* __restrict__ out,
                             int64_t tokens, int hq, int hkv, int d, float eps, int norm, int after_cast) {
    switch (d / 32) {
        case 2: qk_norm_rope_lanes<T, 2>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, eps, norm, after_cast); break;
        case 4: qk_norm_rope_lanes<T, 4>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, eps, norm, after_cast); break;
        case 6: qk_norm_rope_lanes<T, 6>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, eps, norm, after_cast); break;
        default: qk_norm_rope_lanes<T, 8>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, eps, norm, after_cast); break;
    }
}

#define GLUE(T, SUFFIX)                                                                            \
    extern "C" __global__ void silu_mul_##SUFFIX(const T* gu, T* out, int64_t rows, int64_t inter, \
                                                 float* amax) {                                    \
        silu_mul<T>(gu, out, rows, inter, amax);                                                   \
    }                                                                                              \
    extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, const T* y, const T* w, T* sum_out, \
                                                     T* out, int64_t dim, float eps, int after_cast, \
                                                     float* amax) {                                \
        add_rms_norm<T>(x, y, w, sum_out, out, dim, eps, after_cast, amax);                        \
    }                                                                                              \
    extern "C" __global__ void qk_norm_rope_##SUFFIX(const T* qkv, const T* wq, const T* wk,        \
                                                     const T* cosv, const T* sinv, T* out,         \
                                                     int64_t tokens, int hq, int hkv, int d,       \
                                                     float eps, int norm, int after_cast) {        \
        qk_norm_rope<T>(qkv, wq, wk, cosv, sinv, out, tokens, hq, hkv, d, eps, norm, after_cast);  \
    }

GLUE(__nv_bfloat16, bf16)
GLUE(__half, f16)
