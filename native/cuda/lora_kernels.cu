// CUDA kernels of add_lora. Two passes: shrink (one warp per (token, row of A): a dot
// product over in_features) into a float32 scratch rounded to the storage dtype as
// PEFT's lora_A output is, then expand (one thread per (token, output column): a dot
// product over the rank). Tokens with slot -1 return at once. The same contract as
// native/cpu/lora_ops.cpp.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "lora_kernels.h"

namespace corral::cuda {
namespace {

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  return static_cast<float>(v);
}
template <>
__device__ __forceinline__ float to_float<__half>(__half v) {
  return __half2float(v);
}
template <>
__device__ __forceinline__ float to_float<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  return static_cast<T>(v);
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16(v);
}

constexpr int kWarp = 32;
constexpr int kShrinkWarps = 8;
constexpr int kExpandThreads = 256;

// grid (num_tokens, ceil(width / kShrinkWarps)); warp w of block (t, g) computes row
// g * kShrinkWarps + w of A for token t.
template <typename T>
__global__ void shrink_kernel(const T* __restrict__ x, int64_t x_stride,
                              const T* __restrict__ lora_a, const int64_t* __restrict__ slots,
                              float* __restrict__ shrunk, int64_t in_features, int64_t width) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) {
    return;
  }
  const int warp = threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  const int64_t j = static_cast<int64_t>(blockIdx.y) * kShrinkWarps + warp;
  if (j >= width) {
    return;
  }
  const T* xr = x + t * x_stride;
  const T* ar = lora_a + (slot * width + j) * in_features;
  float sum = 0.0f;
  for (int64_t k = lane; k < in_features; k += kWarp) {
    sum += to_float(xr[k]) * to_float(ar[k]);
  }
  for (int offset = kWarp / 2; offset > 0; offset /= 2) {
    sum += __shfl_down_sync(0xffffffffu, sum, offset);
  }
  if (lane == 0) {
    shrunk[t * width + j] = to_float(from_float<T>(sum));
  }
}

// grid (num_tokens, ceil(out_features / kExpandThreads)).
template <typename T>
__global__ void expand_kernel(T* __restrict__ out, int64_t out_stride,
                              const T* __restrict__ lora_b, const int64_t* __restrict__ slots,
                              const float* __restrict__ shrunk, int64_t out_features,
                              int64_t rank, LoraSlices slices) {
  const int64_t t = blockIdx.x;
  const int64_t slot = slots[t];
  if (slot < 0) {
    return;
  }
  const int64_t c = static_cast<int64_t>(blockIdx.y) * kExpandThreads + threadIdx.x;
  if (c >= out_features) {
    return;
  }
  int s = 0;
  while (s + 1 < slices.count && c >= slices.end[s]) {
    ++s;
  }
  const int64_t width = static_cast<int64_t>(slices.count) * rank;
  const float* sr = shrunk + t * width + s * rank;
  const T* bc = lora_b + slot * rank * out_features + c;
  float sum = 0.0f;
  for (int64_t k = 0; k < rank; ++k) {
    sum += sr[k] * to_float(bc[k * out_features]);
  }
  T* o = out + t * out_stride + c;
  *o = from_float<T>(to_float(*o) + sum);
}

template <typename T>
cudaError_t launch(void* out, int64_t out_stride, const void* x, int64_t x_stride,
                   const void* lora_a, const void* lora_b, const int64_t* slots, float* shrunk,
                   int64_t num_tokens, int64_t in_features, int64_t out_features, int64_t rank,
                   LoraSlices slices, cudaStream_t stream) {
  const int64_t width = static_cast<int64_t>(slices.count) * rank;
  const dim3 shrink_grid(static_cast<unsigned>(num_tokens),
                         static_cast<unsigned>((width + kShrinkWarps - 1) / kShrinkWarps));
  shrink_kernel<T><<<shrink_grid, kShrinkWarps * kWarp, 0, stream>>>(
      static_cast<const T*>(x), x_stride, static_cast<const T*>(lora_a), slots, shrunk,
      in_features, width);
  const dim3 expand_grid(static_cast<unsigned>(num_tokens),
                         static_cast<unsigned>((out_features + kExpandThreads - 1) / kExpandThreads));
  expand_kernel<T><<<expand_grid, kExpandThreads, 0, stream>>>(
      static_cast<T*>(out), out_stride, static_cast<const T*>(lora_b), slots, shrunk,
      out_features, rank, slices);
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_add_lora(FusedDtype dtype, void* out, int64_t out_stride, const void* x,
                            int64_t x_stride, const void* lora_a, const void* lora_b,
                            const int64_t* token_slots, float* shrunk, int64_t num_tokens,
                            int64_t in_features, int64_t out_features, int64_t rank,
                            LoraSlices slices, cudaStream_t stream) {
  switch (dtype) {
    case FusedDtype::kFloat:
      return launch<float>(out, out_stride, x, x_stride, lora_a, lora_b, token_slots, shrunk,
                           num_tokens, in_features, out_features, rank, slices, stream);
    case FusedDtype::kHalf:
      return launch<__half>(out, out_stride, x, x_stride, lora_a, lora_b, token_slots, shrunk,
                            num_tokens, in_features, out_features, rank, slices, stream);
    case FusedDtype::kBFloat16:
      return launch<__nv_bfloat16>(out, out_stride, x, x_stride, lora_a, lora_b, token_slots,
                                   shrunk, num_tokens, in_features, out_features, rank, slices,
                                   stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace corral::cuda
