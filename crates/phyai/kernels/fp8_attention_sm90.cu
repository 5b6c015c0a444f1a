// FP8 attention for Hopper: FlashInfer's FA3-lineage FP8 prefill kernel (warp-specialized,
// TMA loads, FP8 wgmma for Q·Kᵀ and P·V, online softmax in f32) for one sequence with
// grouped query heads, head dim 128, no mask, bf16 output; plus the quantization of the
// bf16 inputs to E4M3 with one scale per head.
//
// Unlike kernels/*.cu (device-only modules loaded through the driver), this file has host
// code (the kernel's launch set-up builds TMA descriptors), so the build compiles it with
// nvcc into a static library linked into the binary, and Rust calls the extern "C"
// functions below with raw device pointers and the stream of the calling tensor's device.
//
// Per-head scales: scale[h] = amax_h / 448 (the dequantization factor); the kernel folds
// q_scale·k_scale into the softmax scale and v_scale into the final normalisation.

#include <cuda_bf16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <flashinfer/attention/hopper/quantization/prefill_sm90.cuh>
#include <flashinfer/attention/hopper/variants.cuh>
#include <flashinfer/cutlass_utils.cuh>

namespace phyai_fp8_attention {

constexpr int HEAD_DIM = 128;
constexpr float E4M3_MAX = 448.0f;

// The parameter block the FlashInfer kernel templates read (field names are its contract).
struct Params {
  using DTypeQ = cutlass::float_e4m3_t;
  using DTypeKV = cutlass::float_e4m3_t;
  using DTypeO = cutlass::bfloat16_t;
  using IdType = int32_t;

  DTypeQ* q_ptr;
  DTypeKV* k_ptr;
  DTypeKV* v_ptr;
  DTypeO* o_ptr;
  float* lse_ptr;

  struct AdditionalParams {
    float* maybe_scale_q;
    float* maybe_scale_k;
    float* maybe_scale_v;
    double sm_scale;
    double scale_q_scalar;
    double scale_k_scalar;
    double scale_v_scalar;
  } additional_params;

  int64_t q_stride_n;
  int64_t k_stride_n;
  int64_t v_stride_n;
  int64_t o_stride_n;
  int64_t q_stride_h;
  int64_t k_stride_h;
  int64_t v_stride_h;
  int64_t o_stride_h;

  int qo_len;
  int kv_len;
  int head_dim;
  int num_qo_heads;
  int num_kv_heads;
  int group_size;
  int window_left;

  bool causal;
};

// Rows of one head a block scans; 16 threads cover a 128-wide row with 8-element loads.
constexpr int ROWS_PER_BLOCK = 64;
constexpr int THREADS = 256;
constexpr int LANES_PER_ROW = HEAD_DIM / 8;
constexpr int ROWS_PER_PASS = THREADS / LANES_PER_ROW;

struct alignas(16) Bf16x8 {
  __nv_bfloat162 v[4];
};

// amax[h] = max |x[s, h, :]| over the block's rows (atomic on the float's bits: the values
// are non-negative, so integer order is float order). `amax` starts at zero.
__global__ void amax_per_head(const __nv_bfloat16* __restrict__ x, int64_t stride_s,
                              int64_t stride_h, int rows, float* __restrict__ amax) {
  const int h = blockIdx.y;
  const int lane = threadIdx.x % LANES_PER_ROW;
  const int row0 = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / LANES_PER_ROW;
  float m = 0.0f;
  for (int r = row0; r < min(rows, (int)(blockIdx.x + 1) * ROWS_PER_BLOCK); r += ROWS_PER_PASS) {
    const Bf16x8 p =
        *reinterpret_cast<const Bf16x8*>(x + r * stride_s + h * stride_h + lane * 8);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = __bfloat1622float2(p.v[i]);
      m = fmaxf(m, fmaxf(fabsf(f.x), fabsf(f.y)));
    }
  }
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  __shared__ float warp_max[THREADS / 32];
  if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float b = 0.0f;
    for (int w = 0; w < THREADS / 32; ++w) b = fmaxf(b, warp_max[w]);
    atomicMax(reinterpret_cast<int*>(amax + h), __float_as_int(b));
  }
}

// out[s, h, :] = E4M3(x[s, h, :] / scale_h) (saturating), out contiguous [rows, heads, 128];
// block (0, h) also turns amax[h] into the scale in place.
__global__ void quantize_per_head(const __nv_bfloat16* __restrict__ x, int64_t stride_s,
                                  int64_t stride_h, int rows, int heads,
                                  const float* __restrict__ amax, float* __restrict__ scale,
                                  __nv_fp8_e4m3* __restrict__ out) {
  const int h = blockIdx.y;
  const float s = fmaxf(amax[h], 1e-12f) / E4M3_MAX;
  const float inv = 1.0f / s;
  const int lane = threadIdx.x % LANES_PER_ROW;
  const int row0 = blockIdx.x * ROWS_PER_BLOCK + threadIdx.x / LANES_PER_ROW;
  for (int r = row0; r < min(rows, (int)(blockIdx.x + 1) * ROWS_PER_BLOCK); r += ROWS_PER_PASS) {
    const Bf16x8 p =
        *reinterpret_cast<const Bf16x8*>(x + r * stride_s + h * stride_h + lane * 8);
    __nv_fp8x4_e4m3 q[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const float2 a = __bfloat1622float2(p.v[2 * i]);
      const float2 b = __bfloat1622float2(p.v[2 * i + 1]);
      q[i] = __nv_fp8x4_e4m3(make_float4(a.x * inv, a.y * inv, b.x * inv, b.y * inv));
    }
    *reinterpret_cast<uint2*>(out + ((int64_t)r * heads + h) * HEAD_DIM + lane * 8) =
        *reinterpret_cast<const uint2*>(q);
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) scale[h] = s;
}

// One tile configuration of the kernel: CTA_Q query rows (64 per consumer warp group), CTA_KV
// keys per pipeline stage, STAGES stages of K and V in shared memory.
template <int CTA_Q, int CTA_KV, int STAGES>
cudaError_t run_tiles(Params& p, cudaStream_t stream) {
  using Traits =
      flashinfer::FP8AttentionKernelTraits</*USE_TMA_LOAD_KV=*/true, HEAD_DIM, CTA_Q, CTA_KV,
                                           STAGES, Params::DTypeQ, Params::DTypeKV,
                                           Params::DTypeO, Params::IdType,
                                           flashinfer::DefaultFP8Attention>;
  cudaError_t e = flashinfer::SingleFP8PrefillWithKVCacheKernelTraitsDispatched<
      Traits, /*LEFT_SLIDING_WINDOW=*/false, /*CAUSAL=*/false>(p, stream);
  if (e != cudaSuccess) return e;
  return cudaGetLastError();
}

}  // namespace phyai_fp8_attention

using namespace phyai_fp8_attention;

extern "C" {

// Quantizes x (bf16, [rows, heads, 128] through the given strides, 16-byte aligned rows) to
// out (E4M3, contiguous [rows, heads, 128]) with one scale per head written to scale[heads];
// amax[heads] is scratch. Returns a cudaError_t.
// Per-head amax of x (rows × heads × 128, strides in elements) into amax[heads], after
// zeroing it when `reset`; several calls without reset take the amax over several parts.
int phyai_fp8_amax_heads(const void* x, int64_t stride_s, int64_t stride_h, int rows, int heads,
                         float* amax, int reset, int device, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (reset) {
    e = cudaMemsetAsync(amax, 0, sizeof(float) * heads, st);
    if (e != cudaSuccess) return e;
  }
  if (rows > 0) {
    const dim3 grid((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK, heads);
    amax_per_head<<<grid, THREADS, 0, st>>>(static_cast<const __nv_bfloat16*>(x), stride_s,
                                            stride_h, rows, amax);
  }
  return cudaGetLastError();
}

// E4M3 codes of x with the per-head scales amax[h] / 448, token-major into out (rows ×
// heads × 128); the scales used go to scale[heads].
int phyai_fp8_quantize_heads_with(const void* x, int64_t stride_s, int64_t stride_h, int rows,
                                  int heads, const float* amax, float* scale, void* out,
                                  int device, void* stream) {
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  if (rows > 0) {
    const dim3 grid((rows + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK, heads);
    quantize_per_head<<<grid, THREADS, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const __nv_bfloat16*>(x), stride_s, stride_h, rows, heads, amax, scale,
        static_cast<__nv_fp8_e4m3*>(out));
  }
  return cudaGetLastError();
}

int phyai_fp8_attention_sm90(const void* q, const void* k, const void* v, void* o,
                             float* q_scale, float* k_scale, float* v_scale, int qo_len,
                             int kv_len, int qo_heads, int kv_heads, double sm_scale, int tiles,
                             int device, void* stream) {
  if (kv_heads <= 0 || qo_heads % kv_heads != 0) return cudaErrorInvalidValue;
  cudaError_t e = cudaSetDevice(device);
  if (e != cudaSuccess) return e;
  Params p{};
  p.q_ptr = static_cast<Params::DTypeQ*>(const_cast<void*>(q));
  p.k_ptr = static_cast<Params::DTypeKV*>(const_cast<void*>(k));
  p.v_ptr = static_cast<Params::DTypeKV*>(const_cast<void*>(v));
  p.o_ptr = static_cast<Params::DTypeO*>(o);
  p.lse_ptr = nullptr;
  p.additional_params.maybe_scale_q = q_scale;
  p.additional_params.maybe_scale_k = k_scale;
  p.additional_params.maybe_scale_v = v_scale;
  p.additional_params.sm_scale = sm_scale;
  p.additional_params.scale_q_scalar = 1.0;
  p.additional_params.scale_k_scalar = 1.0;
  p.additional_params.scale_v_scalar = 1.0;
  p.q_stride_n = (int64_t)qo_heads * HEAD_DIM;
  p.q_stride_h = HEAD_DIM;
  p.k_stride_n = (int64_t)kv_heads * HEAD_DIM;
  p.k_stride_h = HEAD_DIM;
  p.v_stride_n = (int64_t)kv_heads * HEAD_DIM;
  p.v_stride_h = HEAD_DIM;
  p.o_stride_n = (int64_t)qo_heads * HEAD_DIM;
  p.o_stride_h = HEAD_DIM;
  p.qo_len = qo_len;
  p.kv_len = kv_len;
  p.head_dim = HEAD_DIM;
  p.num_qo_heads = qo_heads;
  p.num_kv_heads = kv_heads;
  p.group_size = qo_heads / kv_heads;
  p.window_left = -1;
  p.causal = false;
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  switch (tiles) {
    case 0:  // FlashInfer's own choice for head dim 128
      return run_tiles<128, 192, 2>(p, st);
    case 1:
      return run_tiles<128, 256, 2>(p, st);
    case 2:
      return run_tiles<128, 128, 3>(p, st);
    case 3:
      return run_tiles<192, 128, 2>(p, st);
    case 4:
      return run_tiles<192, 192, 2>(p, st);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // extern "C"
