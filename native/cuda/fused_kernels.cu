// The fused element-wise kernels. One thread block per row (norms, activations)
// or per token (rotary); math in float32, intermediates rounded to the storage
// dtype where transformers rounds them, as the CPU kernels do.
#include "common.cuh"
#include "fused_kernels.h"

#include <type_traits>

namespace corral::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ int64_t row_offset(const RowLayout& rows, int64_t r) {
  return (r / rows.inner) * rows.outer_stride + (r % rows.inner) * rows.inner_stride;
}

// The value a T tensor would hold for x.
template <typename T>
__device__ __forceinline__ float round_to(float x) {
  return to_float(from_float<T>(x));
}

// Sum over the thread block; every thread gets the result.
__device__ float block_sum(float x) {
  __shared__ float partial[kThreads / kWarpSize];
  __shared__ float total;
  x = group_sum<kWarpSize>(x);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (lane == 0) {
    partial[warp] = x;
  }
  __syncthreads();
  if (warp == 0) {
    float y = lane < kThreads / kWarpSize ? partial[lane] : 0.0f;
    y = group_sum<kWarpSize>(y);
    if (lane == 0) {
      total = y;
    }
  }
  __syncthreads();
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(T* out, RowLayout out_rows, const T* input, RowLayout in_rows,
                    const T* weight, int64_t width, float epsilon) {
  const T* x = input + row_offset(in_rows, blockIdx.x);
  T* o = out + row_offset(out_rows, blockIdx.x);
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    const float v = to_float(x[i]);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(width) + epsilon);
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    o[i] = from_float<T>(round_to<T>(to_float(x[i]) * inv) * to_float(weight[i]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    fused_add_rms_norm_kernel(T* input, RowLayout in_rows, T* residual, RowLayout res_rows,
                              const T* weight, int64_t width, float epsilon) {
  T* x = input + row_offset(in_rows, blockIdx.x);
  T* res = residual + row_offset(res_rows, blockIdx.x);
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    // Each thread later reads back only the entries it wrote here.
    const T sum = from_float<T>(to_float(x[i]) + to_float(res[i]));
    res[i] = sum;
    const float v = to_float(sum);
    ss += v * v;
  }
  const float inv = rsqrtf(block_sum(ss) / static_cast<float>(width) + epsilon);
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    x[i] = from_float<T>(round_to<T>(to_float(res[i]) * inv) * to_float(weight[i]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    silu_and_mul_kernel(T* out, RowLayout out_rows, const T* input, RowLayout in_rows,
                        int64_t d) {
  const T* gate = input + row_offset(in_rows, blockIdx.x);
  const T* up = gate + d;
  T* o = out + row_offset(out_rows, blockIdx.x);
  for (int64_t i = threadIdx.x; i < d; i += kThreads) {
    const float g = to_float(gate[i]);
    const float act = g / (1.0f + expf(-g));
    o[i] = from_float<T>(round_to<T>(act) * to_float(up[i]));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    gelu_tanh_kernel(T* out, RowLayout out_rows, const T* input, RowLayout in_rows,
                     int64_t width) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const T* x = input + row_offset(in_rows, blockIdx.x);
  T* o = out + row_offset(out_rows, blockIdx.x);
  for (int64_t i = threadIdx.x; i < width; i += kThreads) {
    const float v = to_float(x[i]);
    o[i] = from_float<T>(0.5f * v * (1.0f + tanhf(kBeta * (v + kKappa * v * v * v))));
  }
}

// One thread block per token; a thread takes (head, pair) items.
template <typename T, typename C>
__global__ void __launch_bounds__(kThreads)
    rotary_kernel(const int64_t* positions, HeadRows query, HeadRows key, const C* cache,
                  int64_t rot_dim, bool is_neox) {
  const int64_t t = blockIdx.x;
  const int64_t half = rot_dim / 2;
  const C* cos = cache + positions[t] * rot_dim;
  const C* sin = cos + half;
  const int64_t heads = query.num_heads + key.num_heads;
  for (int64_t item = threadIdx.x; item < heads * half; item += kThreads) {
    const int64_t h = item / half;
    const int64_t i = item % half;
    T* x = h < query.num_heads
               ? static_cast<T*>(query.data) + t * query.token_stride + h * query.head_stride
               : static_cast<T*>(key.data) + t * key.token_stride +
                     (h - query.num_heads) * key.head_stride;
    const int64_t a = is_neox ? i : 2 * i;
    const int64_t b = is_neox ? i + half : 2 * i + 1;
    const float c = to_float(cos[i]);
    const float s = to_float(sin[i]);
    const float x1 = to_float(x[a]);
    const float x2 = to_float(x[b]);
    x[a] = from_float<T>(x1 * c - x2 * s);
    x[b] = from_float<T>(x2 * c + x1 * s);
  }
}

// Max over the thread block; every thread gets the result.
__device__ float block_max(float x) {
  __shared__ float partial[kThreads / kWarpSize];
  __shared__ float total;
  x = group_max<kWarpSize>(x);
  const int warp = threadIdx.x / kWarpSize;
  const int lane = threadIdx.x % kWarpSize;
  if (lane == 0) {
    partial[warp] = x;
  }
  __syncthreads();
  if (warp == 0) {
    float y = lane < kThreads / kWarpSize ? partial[lane] : -INFINITY;
    y = group_max<kWarpSize>(y);
    if (lane == 0) {
      total = y;
    }
  }
  __syncthreads();
  return total;
}

__global__ void __launch_bounds__(kThreads)
    token_logprobs_kernel(float* out, const float* logits, const int64_t* token_ids,
                          int64_t vocab, int64_t row_stride) {
  const float* row = logits + blockIdx.x * row_stride;
  float m = -INFINITY;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    m = fmaxf(m, row[i]);
  }
  m = block_max(m);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    sum += expf(row[i] - m);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    out[blockIdx.x] = (row[token_ids[blockIdx.x]] - m) - logf(sum);
  }
}

// greedy_sample: the first index of the row's maximum (the first NaN if any) and its
// log-probability. Indices go through the float reductions (vocab <= 2^24, checked).
template <typename T>
__global__ void __launch_bounds__(kThreads)
    greedy_sample_kernel(int64_t* token_ids, float* logprobs, const T* logits, int64_t vocab,
                         int64_t row_stride) {
  const T* row = logits + blockIdx.x * row_stride;
  float m = -INFINITY;
  float first_nan = -static_cast<float>(vocab);  // max of -index: the smallest index
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = to_float(row[i]);
    if (isnan(v)) {
      first_nan = fmaxf(first_nan, -static_cast<float>(i));
    }
    m = fmaxf(m, v);
  }
  first_nan = block_max(first_nan);
  if (first_nan > -static_cast<float>(vocab)) {
    if (threadIdx.x == 0) {
      token_ids[blockIdx.x] = static_cast<int64_t>(-first_nan);
      logprobs[blockIdx.x] = NAN;
    }
    return;
  }
  m = block_max(m);
  float first = -static_cast<float>(vocab);
  float sum = 0.0f;
  for (int64_t i = threadIdx.x; i < vocab; i += kThreads) {
    const float v = to_float(row[i]);
    if (v == m) {
      first = fmaxf(first, -static_cast<float>(i));
    }
    sum += expf(v - m);
  }
  first = block_max(first);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    token_ids[blockIdx.x] = static_cast<int64_t>(-first);
    logprobs[blockIdx.x] = -logf(sum);
  }
}

template <typename Fn>
cudaError_t with_type(FusedDtype dtype, Fn&& fn) {
  switch (dtype) {
    case FusedDtype::kFloat:
      return fn(static_cast<float*>(nullptr));
    case FusedDtype::kHalf:
      return fn(static_cast<__half*>(nullptr));
    case FusedDtype::kBFloat16:
      return fn(static_cast<__nv_bfloat16*>(nullptr));
  }
  return cudaErrorInvalidValue;
}

unsigned grid_of(int64_t n) { return static_cast<unsigned>(n); }

}  // namespace

cudaError_t launch_rms_norm(FusedDtype dtype, void* out, RowLayout out_rows, const void* input,
                            RowLayout in_rows, const void* weight, int64_t num_rows,
                            int64_t width, float epsilon, cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    rms_norm_kernel<T><<<grid_of(num_rows), kThreads, 0, stream>>>(
        static_cast<T*>(out), out_rows, static_cast<const T*>(input), in_rows,
        static_cast<const T*>(weight), width, epsilon);
    return cudaGetLastError();
  });
}

cudaError_t launch_fused_add_rms_norm(FusedDtype dtype, void* input, RowLayout in_rows,
                                      void* residual, RowLayout res_rows, const void* weight,
                                      int64_t num_rows, int64_t width, float epsilon,
                                      cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    fused_add_rms_norm_kernel<T><<<grid_of(num_rows), kThreads, 0, stream>>>(
        static_cast<T*>(input), in_rows, static_cast<T*>(residual), res_rows,
        static_cast<const T*>(weight), width, epsilon);
    return cudaGetLastError();
  });
}

cudaError_t launch_silu_and_mul(FusedDtype dtype, void* out, RowLayout out_rows,
                                const void* input, RowLayout in_rows, int64_t num_rows,
                                int64_t d, cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    silu_and_mul_kernel<T><<<grid_of(num_rows), kThreads, 0, stream>>>(
        static_cast<T*>(out), out_rows, static_cast<const T*>(input), in_rows, d);
    return cudaGetLastError();
  });
}

cudaError_t launch_gelu_tanh(FusedDtype dtype, void* out, RowLayout out_rows, const void* input,
                             RowLayout in_rows, int64_t num_rows, int64_t width,
                             cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    gelu_tanh_kernel<T><<<grid_of(num_rows), kThreads, 0, stream>>>(
        static_cast<T*>(out), out_rows, static_cast<const T*>(input), in_rows, width);
    return cudaGetLastError();
  });
}

cudaError_t launch_rotary_embedding(FusedDtype dtype, const int64_t* positions,
                                    int64_t num_tokens, HeadRows query, HeadRows key,
                                    const void* cos_sin_cache, bool cache_is_float,
                                    int64_t rot_dim, bool is_neox, cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    if (cache_is_float) {
      rotary_kernel<T, float><<<grid_of(num_tokens), kThreads, 0, stream>>>(
          positions, query, key, static_cast<const float*>(cos_sin_cache), rot_dim, is_neox);
    } else {
      rotary_kernel<T, T><<<grid_of(num_tokens), kThreads, 0, stream>>>(
          positions, query, key, static_cast<const T*>(cos_sin_cache), rot_dim, is_neox);
    }
    return cudaGetLastError();
  });
}

cudaError_t launch_token_logprobs(float* out, const float* logits, const int64_t* token_ids,
                                  int64_t rows, int64_t vocab, int64_t row_stride,
                                  cudaStream_t stream) {
  token_logprobs_kernel<<<grid_of(rows), kThreads, 0, stream>>>(out, logits, token_ids, vocab,
                                                                row_stride);
  return cudaGetLastError();
}

cudaError_t launch_greedy_sample(FusedDtype dtype, int64_t* token_ids, float* logprobs,
                                 const void* logits, int64_t rows, int64_t vocab,
                                 int64_t row_stride, cudaStream_t stream) {
  return with_type(dtype, [&](auto tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    greedy_sample_kernel<T><<<grid_of(rows), kThreads, 0, stream>>>(
        token_ids, logprobs, static_cast<const T*>(logits), vocab, row_stride);
    return cudaGetLastError();
  });
}

}  // namespace corral::cuda
