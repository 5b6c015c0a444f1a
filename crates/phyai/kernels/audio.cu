// Kernels of the audio VAE decoder, on channels-first [rows = B·C, t] activations.
#include "half.cuh"

// sin for the snake: exact (double) in f32 runs; for 2-byte types the argument is reduced
// to [-pi, pi] first, where the fast intrinsic is accurate far below their precision.
template <typename T> __device__ __forceinline__ float snake_sin(float v) {
    const float r = v - 6.283185307179586f * rintf(v * 0.15915494309189535f);
    return __sinf(r);
}
template <> __device__ __forceinline__ float snake_sin<float>(float v) { return (float)sin((double)v); }

// y = x + sin²(alpha[c]·x) · inv_beta[c], rounded where the unfused tensor ops round:
// alpha·x, the sine, its square and the scaled term. One block row per channel row.
template <typename T>
__device__ void snake(const T* __restrict__ x, const T* __restrict__ alpha, const T* __restrict__ inv_beta,
                      T* __restrict__ y, int t, int c) {
    const int row = blockIdx.y;
    const float a = to_f(alpha[row % c]);
    const float ib = to_f(inv_beta[row % c]);
    const T* xr = x + (size_t)row * t;
    T* yr = y + (size_t)row * t;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < t; i += gridDim.x * blockDim.x) {
        const float v = to_f(xr[i]);
        float s = rnd<T>(snake_sin<T>(rnd<T>(a * v)));
        s = rnd<T>(rnd<T>(s * s) * ib);
        yr[i] = from_f<T>(v + s);
    }
}

// y[row, i] = round(y + bias[row % c]) in place: a conv bias on channels-first rows.
template <typename T> __device__ void bias_rows(T* __restrict__ y, const T* __restrict__ bias, int t, int c) {
    const int row = blockIdx.y;
    const float b = to_f(bias[row % c]);
    T* yr = y + (size_t)row * t;
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < t; i += gridDim.x * blockDim.x) {
        yr[i] = from_f<T>(to_f(yr[i]) + b);
    }
}

#define AUDIO(T, SUFFIX)                                                                               \
    extern "C" __global__ void snake_##SUFFIX(const T* x, const T* alpha, const T* inv_beta, T* y,     \
                                              int t, int c) {                                          \
        snake<T>(x, alpha, inv_beta, y, t, c);                                                         \
    }                                                                                                  \
    extern "C" __global__ void bias_rows_##SUFFIX(T* y, const T* bias, int t, int c) {                 \
        bias_rows<T>(y, bias, t, c);                                                                   \
    }

AUDIO(__nv_bfloat16, bf16)
AUDIO(__half, f16)
AUDIO(float, f32)
