// Launchers of the fused element-wise kernels (rms_norm, fused_add_rms_norm,
// silu_and_mul, gelu_tanh, rotary_embedding), callable from host code without
// torch in the CUDA translation unit. The caller has checked every argument.
// They return the launch status (cudaGetLastError).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace corral::cuda {

// Storage dtype of a fused op's tensors; math is float32 for all three.
enum class FusedDtype { kFloat, kHalf, kBFloat16 };

// Row r of a tensor seen as [rows, width] starts at element
// (r / inner) * outer_stride + (r % inner) * inner_stride: up to two leading
// dimensions of any strides (a [tokens, heads, head_size] view of a fused qkv
// output), the last dimension contiguous.
struct RowLayout {
  int64_t inner;
  int64_t outer_stride;
  int64_t inner_stride;
};

cudaError_t launch_rms_norm(FusedDtype dtype, void* out, RowLayout out_rows, const void* input,
                            RowLayout in_rows, const void* weight, int64_t num_rows,
                            int64_t width, float epsilon, cudaStream_t stream);

cudaError_t launch_fused_add_rms_norm(FusedDtype dtype, void* input, RowLayout in_rows,
                                      void* residual, RowLayout res_rows, const void* weight,
                                      int64_t num_rows, int64_t width, float epsilon,
                                      cudaStream_t stream);

// out [rows, d] = silu(input[:, :d]) * input[:, d:].
cudaError_t launch_silu_and_mul(FusedDtype dtype, void* out, RowLayout out_rows,
                                const void* input, RowLayout in_rows, int64_t num_rows,
                                int64_t d, cudaStream_t stream);

cudaError_t launch_gelu_tanh(FusedDtype dtype, void* out, RowLayout out_rows, const void* input,
                             RowLayout in_rows, int64_t num_rows, int64_t width,
                             cudaStream_t stream);

// Heads of one of query/key: per token num_heads heads, head_stride apart.
struct HeadRows {
  void* data;
  int64_t num_heads;
  int64_t token_stride;
  int64_t head_stride;
};

// cos_sin_cache is [max_position, rot_dim] (cos then sin), float32 when
// cache_is_float, else of the query's dtype.
cudaError_t launch_rotary_embedding(FusedDtype dtype, const int64_t* positions,
                                    int64_t num_tokens, HeadRows query, HeadRows key,
                                    const void* cos_sin_cache, bool cache_is_float,
                                    int64_t rot_dim, bool is_neox, cudaStream_t stream);

// out[r] = logits[r, token_ids[r]] - logsumexp(logits[r]); logits float32
// [rows, vocab] with row stride row_stride.
cudaError_t launch_token_logprobs(float* out, const float* logits, const int64_t* token_ids,
                                  int64_t rows, int64_t vocab, int64_t row_stride,
                                  cudaStream_t stream);

// greedy_sample: token_ids[r] = the first index of the maximum of row r (the first
// NaN if any), logprobs[r] = its log-probability; logits [rows, vocab] of dtype.
cudaError_t launch_greedy_sample(FusedDtype dtype, int64_t* token_ids, float* logprobs,
                                 const void* logits, int64_t rows, int64_t vocab,
                                 int64_t row_stride, cudaStream_t stream);

}  // namespace corral::cuda
