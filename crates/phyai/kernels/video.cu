// Memory-bound steps of the video VAE on frame-major [T, C, H·W] activations: the channel
// RMS norm (F.normalize over channels · √C·γ) with the SiLU that follows it, and the
// channels-last → frame-major transpose of a convolution result with its bias added.
#include "half.cuh"

// x [frames, C, P] → y: y = round(round(x / max(‖x‖₂ over C, 1e-12)) · scale[c]), then
// (silu) round(silu(y)). One thread per (frame, pixel); neighbouring threads read
// neighbouring pixels of the same channel, so every load is coalesced.
template <typename T>
__device__ void channel_norm(const T* __restrict__ x, const T* __restrict__ scale, T* __restrict__ y,
                             int64_t frames, int64_t c, int64_t p, int silu) {
    const int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (i >= frames * p) return;
    const int64_t f = i / p, px = i % p;
    const T* xs = x + f * c * p + px;
    T* ys = y + f * c * p + px;
    float sq = 0.f;
    for (int64_t ch = 0; ch < c; ++ch) {
        const float v = to_f(xs[ch * p]);
        sq += v * v;
    }
    const float inv = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
    for (int64_t ch = 0; ch < c; ++ch) {
        float v = rnd<T>(rnd<T>(to_f(xs[ch * p]) * inv) * to_f(scale[ch]));
        if (silu) v = v / (1.0f + __expf(-v));
        ys[ch * p] = from_f<T>(v);
    }
}

// src [frames, P, C] (channels last) → dst [frames, C, P] with dst = round(src + bias[c]).
// 32×32 tiles through shared memory: reads along C and writes along P both coalesce.
template <typename T>
__device__ void to_frames_bias(const T* __restrict__ src, const T* __restrict__ bias, T* __restrict__ dst,
                               int64_t p, int64_t c) {
    __shared__ float tile[32][33];
    const int64_t f = blockIdx.z;
    const int64_t p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
    const T* s = src + f * p * c;
    T* d = dst + f * p * c;
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
        const int64_t pp = p0 + r, cc = c0 + threadIdx.x;
        if (pp < p && cc < c) tile[r][threadIdx.x] = to_f(s[pp * c + cc]);
    }
    __syncthreads();
    for (int r = threadIdx.y; r < 32; r += blockDim.y) {
        const int64_t cc = c0 + r, pp = p0 + threadIdx.x;
        if (pp < p && cc < c) {
            const float b = bias ? to_f(bias[cc]) : 0.f;
            d[cc * p + pp] = from_f<T>(tile[threadIdx.x][r] + b);
        }
    }
}

#define VIDEO(T, SUFFIX)                                                                            \
    extern "C" __global__ void channel_norm_##SUFFIX(const T* x, const T* scale, T* y, int64_t frames, \
                                                     int64_t c, int64_t p, int silu) {              \
        channel_norm<T>(x, scale, y, frames, c, p, silu);                                           \
    }                                                                                               \
    extern "C" __global__ void to_frames_bias_##SUFFIX(const T* src, const T* bias, T* dst, int64_t p, \
                                                       int64_t c) {                                 \
        to_frames_bias<T>(src, bias, dst, p, c);                                                    \
    }

VIDEO(__nv_bfloat16, bf16)
VIDEO(__half, f16)
