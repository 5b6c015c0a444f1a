// Memory-bound steps of the video VAE on channels-last activations [frames, H, W, C]: the
// channel RMS norm (F.normalize over channels · √C·γ) with the SiLU that follows it, the
// per-channel bias of a convolution with an optional residual (in place), the nearest ×2
// upsampling with the optional channel → frame split of the temporal upsampler, and the
// `dup_up` shortcut added to the up block's output. In channels-last every pixel's
// channels are one contiguous row. Launchers keep element counts below 2^31.
#include "half.cuh"

// Eight 2-byte values as one 16-byte load or store.
struct alignas(16) Vec8 {
    uint16_t v[8];
};

template <typename T> __device__ __forceinline__ float lane_f(const Vec8& p, int i) {
    T t;
    memcpy(&t, &p.v[i], 2);
    return to_f(t);
}
template <typename T> __device__ __forceinline__ void set_lane(Vec8& p, int i, float f) {
    const T t = from_f<T>(f);
    memcpy(&p.v[i], &t, 2);
}

// x [rows, c] → y: y = round(round(x / max(‖x‖₂ over c, 1e-12)) · scale[c]), then (silu)
// round(silu(y)). One warp per row; the second pass re-reads the row from cache. `vec`
// (2-byte types only, c a multiple of 8): rows read as 16-byte vectors.
template <typename T>
__device__ void channel_norm_last(const T* __restrict__ x, const T* __restrict__ scale, T* __restrict__ y,
                                  int rows, int c, int silu, int vec) {
    const int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;
    const T* xs = x + (int64_t)row * c;
    T* ys = y + (int64_t)row * c;
    float sq = 0.f;
    if (vec) {
        const Vec8* xv = reinterpret_cast<const Vec8*>(xs);
        for (int k = lane; k < c / 8; k += 32) {
            const Vec8 p = xv[k];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                const float v = lane_f<T>(p, i);
                sq += v * v;
            }
        }
    } else {
        for (int ch = lane; ch < c; ch += 32) {
            const float v = to_f(xs[ch]);
            sq += v * v;
        }
    }
    for (int off = 16; off > 0; off /= 2) sq += __shfl_xor_sync(0xffffffffu, sq, off);
    const float inv = 1.0f / fmaxf(sqrtf(sq), 1e-12f);
    auto out = [&](float v, float s) {
        v = rnd<T>(rnd<T>(v * inv) * s);
        return silu ? v / (1.0f + __expf(-v)) : v;
    };
    if (vec) {
        const Vec8* xv = reinterpret_cast<const Vec8*>(xs);
        const Vec8* sv = reinterpret_cast<const Vec8*>(scale);
        Vec8* yv = reinterpret_cast<Vec8*>(ys);
        for (int k = lane; k < c / 8; k += 32) {
            const Vec8 p = xv[k], s = sv[k];
            Vec8 r;
#pragma unroll
            for (int i = 0; i < 8; ++i) set_lane<T>(r, i, out(lane_f<T>(p, i), lane_f<T>(s, i)));
            yv[k] = r;
        }
    } else {
        for (int ch = lane; ch < c; ch += 32) ys[ch] = from_f<T>(out(to_f(xs[ch]), to_f(scale[ch])));
    }
}

// y [n / c, c] = round(y + bias[c]) then, with a residual, round(· + res), in place; either
// pointer may be null. `vec` (2-byte types only): 16-byte vectors.
template <typename T>
__device__ void bias_residual_last(T* __restrict__ y, const T* __restrict__ bias, const T* __restrict__ res,
                                   int n, int c, int vec) {
    const int stride = gridDim.x * blockDim.x;
    if (vec) {
        Vec8* yv = reinterpret_cast<Vec8*>(y);
        const Vec8* rv = reinterpret_cast<const Vec8*>(res);
        const Vec8* bv = reinterpret_cast<const Vec8*>(bias);
        const int cv = c / 8;
        for (int k = blockIdx.x * blockDim.x + threadIdx.x; k < n / 8; k += stride) {
            Vec8 p = yv[k], b, r;
            if (bias) b = bv[k % cv];
            if (res) r = rv[k];
#pragma unroll
            for (int i = 0; i < 8; ++i) {
                float v = lane_f<T>(p, i);
                if (bias) v = rnd<T>(v + lane_f<T>(b, i));
                if (res) v += lane_f<T>(r, i);
                set_lane<T>(p, i, v);
            }
            yv[k] = p;
        }
    } else {
        for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
            float v = to_f(y[i]);
            if (bias) v = rnd<T>(v + to_f(bias[i % c]));
            if (res) v += to_f(res[i]);
            y[i] = from_f<T>(v);
        }
    }
}

// out = round(y + dup_up(x)): x [t, h, w, c], y and out [t·ft − drop, h·fs, w·fs, o]. Output
// channel o of sub-frame a and sub-pixel (b1, b2) reads channel ((o·ft + a)·fs + b1)·fs + b2
// of the channel-repeated input, i.e. x channel that / (o·ft·fs² / c). One thread per
// output pixel and run of `span` channels.
template <typename T>
__device__ void dup_up_add_last(const T* __restrict__ y, const T* __restrict__ x, T* __restrict__ out,
                                int pixels, int h, int w, int c, int o, int ft, int fs, int drop, int span) {
    const int w2 = w * fs, h2 = h * fs, repeats = o * ft * fs * fs / c, runs = o / span;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < pixels * runs; i += stride) {
        const int run = i % runs;
        int r = i / runs;
        const int xx = r % w2;
        r /= w2;
        const int yy = r % h2;
        const int tf = r / h2 + drop;
        const int t = tf / ft, a = tf % ft;
        const T* src = x + ((int64_t)(t * h + yy / fs) * w + xx / fs) * c;
        const int sub = (a * fs + yy % fs) * fs + xx % fs, step = ft * fs * fs;
        const int64_t base = (int64_t)(i / runs) * o + run * span;
        for (int k = 0; k < span; ++k) {
            const int oc = run * span + k;
            const float v = to_f(src[(oc * step + sub) / repeats]);
            out[base + k] = from_f<T>(to_f(y[base + k]) + v);
        }
    }
}

#define VIDEO(T, SUFFIX)                                                                              \
    extern "C" __global__ void channel_norm_last_##SUFFIX(const T* x, const T* scale, T* y, int rows, \
                                                          int c, int silu, int vec) {                 \
        channel_norm_last<T>(x, scale, y, rows, c, silu, vec);                                        \
    }                                                                                                 \
    extern "C" __global__ void bias_residual_last_##SUFFIX(T* y, const T* bias, const T* res, int n,  \
                                                           int c, int vec) {                          \
        bias_residual_last<T>(y, bias, res, n, c, vec);                                               \
    }                                                                                                 \
    extern "C" __global__ void dup_up_add_last_##SUFFIX(const T* y, const T* x, T* out, int pixels,   \
                                                        int h, int w, int c, int o, int ft, int fs,   \
                                                        int drop, int span) {                         \
        dup_up_add_last<T>(y, x, out, pixels, h, w, c, o, ft, fs, drop, span);                        \
    }

VIDEO(__nv_bfloat16, bf16)
VIDEO(__half, f16)
VIDEO(float, f32)

// Nearest ×2 upsampling with a channel → frame split, as pure data movement in words U of
// a pixel row: x [t, h, w, s·cu] → out [t·s, 2h, 2w, cu], out frame t·s + a taking channel
// block a (the temporal upsampler's 2C outputs become two frames).
template <typename U>
__device__ void upsample_last(const U* __restrict__ x, U* __restrict__ out, int n, int h, int w, int cu, int s) {
    const int w2 = 2 * w, h2 = 2 * h;
    const int stride = gridDim.x * blockDim.x;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int k = i % cu;
        int r = i / cu;
        const int xx = r % w2;
        r /= w2;
        const int yy = r % h2;
        r /= h2;
        const int t = r / s, a = r % s;
        out[i] = x[((int64_t)(t * h + yy / 2) * w + xx / 2) * (s * cu) + a * cu + k];
    }
}

extern "C" __global__ void upsample_last_u16(const uint4* x, uint4* out, int n, int h, int w, int cu, int s) {
    upsample_last<uint4>(x, out, n, h, w, cu, s);
}
extern "C" __global__ void upsample_last_u2(const uint16_t* x, uint16_t* out, int n, int h, int w, int cu, int s) {
    upsample_last<uint16_t>(x, out, n, h, w, cu, s);
}
extern "C" __global__ void upsample_last_u4(const uint32_t* x, uint32_t* out, int n, int h, int w, int cu, int s) {
    upsample_last<uint32_t>(x, out, n, h, w, cu, s);
}
