// Argument checks of the fused element-wise ops (rms_norm, fused_add_rms_norm,
// silu_and_mul, gelu_tanh, rotary_embedding, token_logprobs), shared by the CPU
// kernels (cpu/fused_ops.cpp) and the CUDA ones (cuda/fused_elementwise_op.cpp), so
// that both backends refuse the same inputs with the same messages and one set of
// bad-input tests holds both. What differs per backend is only where a tensor must
// live: each check takes an `on_device(tensor, name)` callable that the backend
// supplies, and index tensors (positions, token ids) are brought to the host by the
// caller, which then checks their values here.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace corral::fused_checks {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op, ": ",
              name, " dtype must be float32, bfloat16 or float16, got ", dtype);
}

inline void check_last_dim_contiguous(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must have at least one dimension");
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) <= 1, op, ": ", name,
              " must be contiguous in its last dimension, got strides ", t.strides());
}

template <typename OnDevice>
void check_norm_args(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                     double epsilon, const char* op, const char* out_name,
                     OnDevice&& on_device) {
  on_device(input, "input");
  on_device(out, out_name);
  on_device(weight, "weight");
  check_float_dtype(input, op, "input");
  TORCH_CHECK(out.scalar_type() == input.scalar_type() &&
                  weight.scalar_type() == input.scalar_type(),
              op, ": ", out_name, ", input and weight must share one dtype, got ",
              out.scalar_type(), ", ", input.scalar_type(), ", ", weight.scalar_type());
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) > 0, op,
              ": input must be [..., hidden_size] with hidden_size > 0, got ", input.sizes());
  TORCH_CHECK(out.sizes() == input.sizes(), op, ": ", out_name, " shape ", out.sizes(),
              " differs from input shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 1 && weight.size(0) == input.size(-1), op,
              ": weight must be [hidden_size] = [", input.size(-1), "], got ", weight.sizes());
  TORCH_CHECK(weight.is_contiguous(), op, ": weight must be contiguous");
  TORCH_CHECK(epsilon >= 0.0, op, ": epsilon must be non-negative, got ", epsilon);
}

// fused_add_rms_norm writes both: one tensor in both roles would be read after
// it was overwritten.
inline void check_distinct(const at::Tensor& input, const at::Tensor& residual,
                           const char* op) {
  TORCH_CHECK(input.numel() == 0 || input.data_ptr() != residual.data_ptr(), op,
              ": input and residual must be different tensors");
}

template <typename OnDevice>
void check_unary_args(const at::Tensor& out, const at::Tensor& input, const char* op,
                      OnDevice&& on_device) {
  on_device(input, "input");
  on_device(out, "out");
  check_float_dtype(input, op, "input");
  TORCH_CHECK(out.scalar_type() == input.scalar_type(), op, ": out dtype ", out.scalar_type(),
              " differs from input dtype ", input.scalar_type());
}

// silu_and_mul: input [..., 2 * d] -> out [..., d].
template <typename OnDevice>
void check_gated_args(const at::Tensor& out, const at::Tensor& input, const char* op,
                      OnDevice&& on_device) {
  check_unary_args(out, input, op, on_device);
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0, op,
              ": input must be [..., 2 * d], got ", input.sizes());
  auto expected = input.sizes().vec();
  expected.back() /= 2;
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), op, ": out must be ", expected,
              " for input ", input.sizes(), ", got ", out.sizes());
}

// gelu_tanh: out has the input's shape.
template <typename OnDevice>
void check_same_shape_args(const at::Tensor& out, const at::Tensor& input, const char* op,
                           OnDevice&& on_device) {
  check_unary_args(out, input, op, on_device);
  TORCH_CHECK(out.sizes() == input.sizes(), op, ": out shape ", out.sizes(),
              " differs from input shape ", input.sizes());
  TORCH_CHECK(input.dim() >= 1, op, ": input must have at least one dimension");
}

// Where one of query/key keeps its heads: per token a run of heads of head_size
// entries, head_stride apart.
struct HeadLayout {
  int64_t num_heads;
  int64_t token_stride;
  int64_t head_stride;
};

inline HeadLayout head_layout(const at::Tensor& t, int64_t num_tokens, int64_t head_size,
                              const char* op, const char* name) {
  TORCH_CHECK(t.dim() == 2 || t.dim() == 3, op, ": ", name,
              " must be [num_tokens, num_heads * head_size] or [num_tokens, num_heads, "
              "head_size], got ",
              t.sizes());
  TORCH_CHECK(t.size(0) == num_tokens, op, ": ", name, " has ", t.size(0),
              " tokens but positions has ", num_tokens);
  TORCH_CHECK(t.stride(-1) == 1, op, ": ", name,
              " must be contiguous in its last dimension, got strides ", t.strides());
  if (t.dim() == 3) {
    TORCH_CHECK(t.size(2) == head_size, op, ": ", name, " head size ", t.size(2),
                " differs from head_size ", head_size);
    return {t.size(1), t.stride(0), t.stride(1)};
  }
  TORCH_CHECK(t.size(1) % head_size == 0, op, ": ", name, " width ", t.size(1),
              " is not a multiple of head_size ", head_size);
  return {t.size(1) / head_size, t.stride(0), head_size};
}

// Everything about rotary_embedding but the positions; returns rot_dim.
template <typename OnDevice>
int64_t check_rotary_args(const at::Tensor& query, const at::Tensor& key, int64_t head_size,
                          const at::Tensor& cos_sin_cache, const char* op,
                          OnDevice&& on_device) {
  on_device(query, "query");
  on_device(key, "key");
  on_device(cos_sin_cache, "cos_sin_cache");
  check_float_dtype(query, op, "query");
  TORCH_CHECK(key.scalar_type() == query.scalar_type(), op, ": key dtype ", key.scalar_type(),
              " differs from query dtype ", query.scalar_type());
  TORCH_CHECK(cos_sin_cache.scalar_type() == at::kFloat ||
                  cos_sin_cache.scalar_type() == query.scalar_type(),
              op, ": cos_sin_cache must be float32 or the query's dtype (", query.scalar_type(),
              "), got ", cos_sin_cache.scalar_type());
  TORCH_CHECK(head_size > 0, op, ": head_size must be positive, got ", head_size);
  TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(), op,
              ": cos_sin_cache must be a contiguous [max_position, rot_dim], got ",
              cos_sin_cache.sizes());
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK(rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= head_size, op,
              ": cos_sin_cache's rot_dim ", rot_dim,
              " must be even, positive and at most head_size ", head_size);
  return rot_dim;
}

// `positions` is a contiguous int64 CPU tensor (the caller's host copy).
inline void check_positions(const at::Tensor& positions, int64_t max_position, const char* op) {
  TORCH_CHECK(positions.dim() == 1, op, ": positions must be [num_tokens], got ",
              positions.sizes());
  const int64_t* pos = positions.const_data_ptr<int64_t>();
  for (int64_t t = 0; t < positions.size(0); ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_position, op, ": positions[", t, "] = ", pos[t],
                " is outside the cos_sin_cache's ", max_position, " positions");
  }
}

template <typename OnDevice>
void check_token_logprobs_args(const at::Tensor& out, const at::Tensor& logits, const char* op,
                               OnDevice&& on_device) {
  on_device(logits, "logits");
  on_device(out, "out");
  TORCH_CHECK(logits.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat, op,
              ": logits and out must be float32, got ", logits.scalar_type(), " and ",
              out.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, op,
              ": logits must be [rows, vocab] with vocab > 0, got ", logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1, op, ": logits must be contiguous in the vocab dimension");
  const int64_t rows = logits.size(0);
  TORCH_CHECK(out.dim() == 1 && out.size(0) == rows && out.is_contiguous(), op,
              ": out must be a contiguous [rows] = [", rows, "], got ", out.sizes());
}

template <typename OnDevice>
void check_greedy_sample_args(const at::Tensor& token_ids, const at::Tensor& logprobs,
                              const at::Tensor& logits, const char* op, OnDevice&& on_device) {
  on_device(logits, "logits");
  on_device(token_ids, "token_ids");
  on_device(logprobs, "logprobs");
  const auto dtype = logits.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, op,
              ": logits must be [rows, vocab] with vocab > 0, got ", logits.sizes());
  // (Indices travel as float32 through the CUDA kernel's reductions.)
  TORCH_CHECK(logits.size(1) <= (int64_t{1} << 24), op, ": vocab ", logits.size(1),
              " is over 2^24");
  TORCH_CHECK(logits.stride(1) == 1, op, ": logits must be contiguous in the vocab dimension");
  const int64_t rows = logits.size(0);
  TORCH_CHECK(token_ids.scalar_type() == at::kLong && token_ids.dim() == 1 &&
                  token_ids.size(0) == rows && token_ids.is_contiguous(),
              op, ": token_ids must be a contiguous int64 [rows] = [", rows, "], got ",
              token_ids.scalar_type(), " ", token_ids.sizes());
  TORCH_CHECK(logprobs.scalar_type() == at::kFloat && logprobs.dim() == 1 &&
                  logprobs.size(0) == rows && logprobs.is_contiguous(),
              op, ": logprobs must be a contiguous float32 [rows] = [", rows, "], got ",
              logprobs.scalar_type(), " ", logprobs.sizes());
}

// `token_ids` is a contiguous int64 CPU tensor (the caller's host copy).
inline void check_token_ids(const at::Tensor& token_ids, int64_t rows, int64_t vocab,
                            const char* op) {
  TORCH_CHECK(token_ids.dim() == 1 && token_ids.size(0) == rows, op,
              ": token_ids must be [rows] = [", rows, "], got ", token_ids.sizes());
  const int64_t* ids = token_ids.const_data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(ids[r] >= 0 && ids[r] < vocab, op, ": token_ids[", r, "] = ", ids[r],
                " is outside the vocabulary of ", vocab);
  }
}

}  // namespace corral::fused_checks
