// Device helpers shared by the CUDA kernels: conversions to and from float,
// 16-byte vector loads, warp reductions. Free of ATen so that the kernel
// translation units compile quickly.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace corral::cuda {

constexpr int kWarpSize = 32;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) {
  return __bfloat162float(x);
}

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// Every supported head size times every element size is a multiple of 16
// bytes, so a cache or query row is read as whole 16-byte vectors.
template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));

template <typename T>
struct alignas(16) Vec16 {
  T elems[kVecElems<T>];
};

template <typename T>
__device__ __forceinline__ Vec16<T> load16(const T* src) {
  return *reinterpret_cast<const Vec16<T>*>(src);
}

template <typename T>
__device__ __forceinline__ void to_floats(const Vec16<T>& v, float (&dst)[kVecElems<T>]) {
#pragma unroll
  for (int e = 0; e < kVecElems<T>; ++e) {
    dst[e] = to_float(v.elems[e]);
  }
}

template <typename T>
__device__ __forceinline__ void load_vec(const T* src, float (&dst)[kVecElems<T>]) {
  to_floats(load16(src), dst);
}

// Reductions over aligned groups of WIDTH lanes (WIDTH a power of two <= 32).
// Every lane of the warp must call them: the masks name the full warp.
template <int WIDTH>
__device__ __forceinline__ float group_sum(float x) {
#pragma unroll
  for (int offset = WIDTH / 2; offset > 0; offset /= 2) {
    x += __shfl_xor_sync(0xffffffffu, x, offset);
  }
  return x;
}

template <int WIDTH>
__device__ __forceinline__ float group_max(float x) {
#pragma unroll
  for (int offset = WIDTH / 2; offset > 0; offset /= 2) {
    x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, offset));
  }
  return x;
}

constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }

constexpr int next_pow2(int x) {
  int p = 1;
  while (p < x) {
    p *= 2;
  }
  return p;
}

}  // namespace corral::cuda
