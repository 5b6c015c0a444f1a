// FP8 E4M3 operands for the cuBLASLt GEMMs: per-tensor absolute maximum (dynamic scales),
// quantization x -> e4m3(clamp(x / s, ±448)), and dequantization codes -> code · s.
//
// Scales live in device memory so nothing waits on the host: a quantization reads either a
// calibrated scale or the amax of its input (s = amax / 448, 1 for an all-zero input) and
// block 0 writes the scale it used where the GEMM reads it. Division is the exactly rounded
// one (__fdiv_rn), not fast math, so codes equal the CPU encoder's (round to nearest even,
// saturating: __NV_SATFINITE).
#include "half.cuh"
#include <cuda_fp8.h>

// max|x| over n values into *amax (which the caller zeroed). Grid-stride, eight values per
// 16-byte load when x is 16-byte aligned and n % 8 == 0 (16-bit types), else one by one;
// one atomic per block. Non-negative floats order like their bit patterns as unsigned ints.
template <typename T> struct __align__(16) Pack8 { T v[8]; };

template <typename T>
__device__ void amax(const T* __restrict__ x, int64_t n, float* __restrict__ out) {
    __shared__ float shared[32];
    float m = 0.f;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (sizeof(T) == 2 && n % 8 == 0 && ((uintptr_t)x & 15) == 0) {
        const Pack8<T>* p = reinterpret_cast<const Pack8<T>*>(x);
        for (int64_t i = first; i < n / 8; i += stride) {
            const Pack8<T> v = p[i];
#pragma unroll
            for (int k = 0; k < 8; ++k) m = fmaxf(m, fabsf(to_f<T>(v.v[k])));
        }
    } else {
        for (int64_t i = first; i < n; i += stride) m = fmaxf(m, fabsf(to_f<T>(x[i])));
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) shared[warp] = m;
    __syncthreads();
    if (warp == 0) {
        m = lane < (int)((blockDim.x + 31) >> 5) ? shared[lane] : 0.f;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
        if (lane == 0) atomicMax(reinterpret_cast<unsigned int*>(out), __float_as_uint(m));
    }
}

__device__ __forceinline__ uint8_t e4m3_code(float v, float s) {
    const float q = fminf(fmaxf(__fdiv_rn(v, s), -448.f), 448.f);
    return (uint8_t)__nv_cvt_float_to_fp8(q, __NV_SATFINITE, __NV_E4M3);
}

// codes[i] = e4m3(clamp(x[i] / s, ±448)). `dynamic`: s = *scale_in / 448 (an amax; 1 when
// it is 0), else s = *scale_in. Block 0 stores s in *scale_out when scale_out is non-null.
template <typename T>
__device__ void quantize(const T* __restrict__ x, int64_t n, const float* __restrict__ scale_in,
                         int dynamic, uint8_t* __restrict__ codes, float* __restrict__ scale_out) {
    float s = *scale_in;
    if (dynamic) s = s > 0.f ? __fdiv_rn(s, 448.f) : 1.f;
    if (scale_out && blockIdx.x == 0 && threadIdx.x == 0) *scale_out = s;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    const int64_t first = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (sizeof(T) == 2 && n % 8 == 0 && ((uintptr_t)x & 15) == 0 && ((uintptr_t)codes & 7) == 0) {
        // Eight values in one 16-byte load, eight codes in one 8-byte store.
        const Pack8<T>* p = reinterpret_cast<const Pack8<T>*>(x);
        uint2* c = reinterpret_cast<uint2*>(codes);
        for (int64_t i = first; i < n / 8; i += stride) {
            const Pack8<T> v = p[i];
            uint32_t w[2] = {0u, 0u};
#pragma unroll
            for (int k = 0; k < 8; ++k)
                w[k / 4] |= (uint32_t)e4m3_code(to_f<T>(v.v[k]), s) << (8 * (k % 4));
            c[i] = make_uint2(w[0], w[1]);
        }
    } else {
        for (int64_t i = first; i < n; i += stride) codes[i] = e4m3_code(to_f<T>(x[i]), s);
    }
}

// out[i] = round_T(decode(codes[i]) · s), s = *scale: the 16-bit weight of W8A16 steps.
template <typename T>
__device__ void dequantize(const uint8_t* __restrict__ codes, int64_t n,
                           const float* __restrict__ scale, T* __restrict__ out) {
    const float s = *scale;
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)codes[i], __NV_E4M3);
        out[i] = from_f<T>(__half2float(__half(h)) * s);
    }
}

#define FP8_KERNELS(T, SUFFIX)                                                                   \
    extern "C" __global__ void amax_##SUFFIX(const T* x, int64_t n, float* out) {              \
        amax<T>(x, n, out);                                                                      \
    }                                                                                            \
    extern "C" __global__ void quantize_e4m3_##SUFFIX(const T* x, int64_t n, const float* s,   \
                                                       int dynamic, uint8_t* codes,             \
                                                       float* s_out) {                          \
        quantize<T>(x, n, s, dynamic, codes, s_out);                                            \
    }

FP8_KERNELS(__nv_bfloat16, bf16)
FP8_KERNELS(__half, f16)
FP8_KERNELS(float, f32)

extern "C" __global__ void dequantize_e4m3_bf16(const uint8_t* codes, int64_t n, const float* s,
                                                __nv_bfloat16* out) {
    dequantize<__nv_bfloat16>(codes, n, s, out);
}
extern "C" __global__ void dequantize_e4m3_f16(const uint8_t* codes, int64_t n, const float* s,
                                               __half* out) {
    dequantize<__half>(codes, n, s, out);
}
extern "C" __global__ void dequantize_e4m3_f32(const uint8_t* codes, int64_t n, const float* s,
                                               float* out) {
    dequantize<float>(codes, n, s, out);
}
