// The fused element-wise ops for CUDA tensors: rms_norm, fused_add_rms_norm,
// silu_and_mul, gelu_tanh and rotary_embedding. Checks mirror the CPU kernels'
// (same messages, so one set of bad-input tests holds both backends).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "fused_kernels.h"
#include "host_index.h"

namespace corral::cuda {
namespace {

FusedDtype fused_dtype(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return FusedDtype::kFloat;
    case at::kHalf:
      return FusedDtype::kHalf;
    case at::kBFloat16:
      return FusedDtype::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": ", name, " dtype must be float32, bfloat16 or float16, got ",
                  t.scalar_type());
  }
}

void check_cuda(const at::Tensor& t, const at::Tensor& like, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
  TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", like.device());
}

// Collapses the leading dimensions of t into at most two levels of strides.
RowLayout row_layout(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.dim() >= 1, op, ": ", name, " must have at least one dimension");
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) <= 1, op, ": ", name,
              " must be contiguous in its last dimension, got strides ", t.strides());
  std::vector<int64_t> sizes;
  std::vector<int64_t> strides;
  for (int64_t d = t.dim() - 2; d >= 0; --d) {
    if (t.size(d) == 1) {
      continue;
    }
    if (!sizes.empty() && t.stride(d) == strides.back() * sizes.back()) {
      sizes.back() *= t.size(d);
    } else {
      sizes.push_back(t.size(d));
      strides.push_back(t.stride(d));
    }
  }
  TORCH_CHECK(sizes.size() <= 2, op, ": ", name,
              " has leading dimensions that do not fold into two strides; got strides ",
              t.strides());
  if (sizes.empty()) {
    return {1, 0, 0};
  }
  if (sizes.size() == 1) {
    return {sizes[0], 0, strides[0]};
  }
  return {sizes[0], strides[1], strides[0]};
}

int64_t num_rows(const at::Tensor& t) { return t.size(-1) == 0 ? 0 : t.numel() / t.size(-1); }

void check_norm_args(const at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
                     double epsilon, const char* op, const char* out_name) {
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor, got ", input.device());
  check_cuda(out, input, op, out_name);
  check_cuda(weight, input, op, "weight");
  fused_dtype(input, op, "input");
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

cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index());
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
              double epsilon) {
  constexpr const char* op = "rms_norm";
  check_norm_args(out, input, weight, epsilon, op, "out");
  const RowLayout in_rows = row_layout(input, op, "input");
  const RowLayout out_rows = row_layout(out, op, "out");
  if (num_rows(input) == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(launch_rms_norm(fused_dtype(input, op, "input"), out.data_ptr(), out_rows,
                                 input.data_ptr(), in_rows, weight.data_ptr(), num_rows(input),
                                 input.size(-1), static_cast<float>(epsilon), stream_of(input)));
}

void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight,
                        double epsilon) {
  constexpr const char* op = "fused_add_rms_norm";
  check_norm_args(residual, input, weight, epsilon, op, "residual");
  TORCH_CHECK(input.numel() == 0 || input.data_ptr() != residual.data_ptr(), op,
              ": input and residual must be different tensors");
  const RowLayout in_rows = row_layout(input, op, "input");
  const RowLayout res_rows = row_layout(residual, op, "residual");
  if (num_rows(input) == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(launch_fused_add_rms_norm(
      fused_dtype(input, op, "input"), input.data_ptr(), in_rows, residual.data_ptr(), res_rows,
      weight.data_ptr(), num_rows(input), input.size(-1), static_cast<float>(epsilon),
      stream_of(input)));
}

void check_unary_args(const at::Tensor& out, const at::Tensor& input, const char* op) {
  TORCH_CHECK(input.is_cuda(), op, ": input must be a CUDA tensor, got ", input.device());
  check_cuda(out, input, op, "out");
  fused_dtype(input, op, "input");
  TORCH_CHECK(out.scalar_type() == input.scalar_type(), op, ": out dtype ", out.scalar_type(),
              " differs from input dtype ", input.scalar_type());
}

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  constexpr const char* op = "silu_and_mul";
  check_unary_args(out, input, op);
  TORCH_CHECK(input.dim() >= 1 && input.size(-1) % 2 == 0, op,
              ": input must be [..., 2 * d], got ", input.sizes());
  auto expected = input.sizes().vec();
  expected.back() /= 2;
  TORCH_CHECK(out.sizes() == at::IntArrayRef(expected), op, ": out must be ", expected,
              " for input ", input.sizes(), ", got ", out.sizes());
  const RowLayout in_rows = row_layout(input, op, "input");
  const RowLayout out_rows = row_layout(out, op, "out");
  if (out.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(launch_silu_and_mul(fused_dtype(input, op, "input"), out.data_ptr(), out_rows,
                                     input.data_ptr(), in_rows, num_rows(out), out.size(-1),
                                     stream_of(input)));
}

void gelu_tanh(at::Tensor& out, const at::Tensor& input) {
  constexpr const char* op = "gelu_tanh";
  check_unary_args(out, input, op);
  TORCH_CHECK(out.sizes() == input.sizes(), op, ": out shape ", out.sizes(),
              " differs from input shape ", input.sizes());
  const RowLayout in_rows = row_layout(input, op, "input");
  const RowLayout out_rows = row_layout(out, op, "out");
  if (out.numel() == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(input.device());
  C10_CUDA_CHECK(launch_gelu_tanh(fused_dtype(input, op, "input"), out.data_ptr(), out_rows,
                                  input.data_ptr(), in_rows, num_rows(input), input.size(-1),
                                  stream_of(input)));
}

HeadRows head_rows(at::Tensor& t, int64_t num_tokens, int64_t head_size, const char* op,
                   const char* name) {
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
    return {t.data_ptr(), t.size(1), t.stride(0), t.stride(1)};
  }
  TORCH_CHECK(t.size(1) % head_size == 0, op, ": ", name, " width ", t.size(1),
              " is not a multiple of head_size ", head_size);
  return {t.data_ptr(), t.size(1) / head_size, t.stride(0), head_size};
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
  constexpr const char* op = "rotary_embedding";
  TORCH_CHECK(query.is_cuda(), op, ": query must be a CUDA tensor, got ", query.device());
  check_cuda(key, query, op, "key");
  check_cuda(cos_sin_cache, query, op, "cos_sin_cache");
  const FusedDtype dtype = fused_dtype(query, op, "query");
  TORCH_CHECK(key.scalar_type() == query.scalar_type(), op, ": key dtype ", key.scalar_type(),
              " differs from query dtype ", query.scalar_type());
  const bool cache_is_float = cos_sin_cache.scalar_type() == at::kFloat;
  TORCH_CHECK(cache_is_float || cos_sin_cache.scalar_type() == query.scalar_type(), op,
              ": cos_sin_cache must be float32 or the query's dtype (", query.scalar_type(),
              "), got ", cos_sin_cache.scalar_type());
  TORCH_CHECK(head_size > 0, op, ": head_size must be positive, got ", head_size);
  TORCH_CHECK(cos_sin_cache.dim() == 2 && cos_sin_cache.is_contiguous(), op,
              ": cos_sin_cache must be a contiguous [max_position, rot_dim], got ",
              cos_sin_cache.sizes());
  const int64_t rot_dim = cos_sin_cache.size(1);
  TORCH_CHECK(rot_dim > 0 && rot_dim % 2 == 0 && rot_dim <= head_size, op,
              ": cos_sin_cache's rot_dim ", rot_dim,
              " must be even, positive and at most head_size ", head_size);
  // Positions index the table: checked on the host like every other index
  // (one small copy and a synchronisation when they live on the device).
  const at::Tensor pos_host =
      index_on_host(positions, op, "positions", at::kLong, query.device());
  TORCH_CHECK(pos_host.dim() == 1, op, ": positions must be [num_tokens], got ",
              pos_host.sizes());
  const int64_t num_tokens = pos_host.size(0);
  const HeadRows q = head_rows(query, num_tokens, head_size, op, "query");
  const HeadRows k = head_rows(key, num_tokens, head_size, op, "key");
  const int64_t* pos = pos_host.data_ptr<int64_t>();
  const int64_t max_position = cos_sin_cache.size(0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(pos[t] >= 0 && pos[t] < max_position, op, ": positions[", t, "] = ", pos[t],
                " is outside the cos_sin_cache's ", max_position, " positions");
  }
  if (num_tokens == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(query.device());
  const at::Tensor pos_dev = index_on_device(positions, query.device());
  C10_CUDA_CHECK(launch_rotary_embedding(dtype, pos_dev.data_ptr<int64_t>(), num_tokens, q, k,
                                         cos_sin_cache.data_ptr(), cache_is_float, rot_dim,
                                         is_neox, stream_of(query)));
}

void token_logprobs(at::Tensor& out, const at::Tensor& logits, const at::Tensor& token_ids) {
  constexpr const char* op = "token_logprobs";
  TORCH_CHECK(logits.is_cuda(), op, ": logits must be a CUDA tensor, got ", logits.device());
  check_cuda(out, logits, op, "out");
  TORCH_CHECK(logits.scalar_type() == at::kFloat && out.scalar_type() == at::kFloat, op,
              ": logits and out must be float32, got ", logits.scalar_type(), " and ",
              out.scalar_type());
  TORCH_CHECK(logits.dim() == 2 && logits.size(1) > 0, op,
              ": logits must be [rows, vocab] with vocab > 0, got ", logits.sizes());
  TORCH_CHECK(logits.stride(1) == 1, op, ": logits must be contiguous in the vocab dimension");
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const at::Tensor ids_host =
      index_on_host(token_ids, op, "token_ids", at::kLong, logits.device());
  TORCH_CHECK(ids_host.dim() == 1 && ids_host.size(0) == rows, op,
              ": token_ids must be [rows] = [", rows, "], got ", ids_host.sizes());
  TORCH_CHECK(out.dim() == 1 && out.size(0) == rows && out.is_contiguous(), op,
              ": out must be a contiguous [rows] = [", rows, "], got ", out.sizes());
  const int64_t* ids = ids_host.data_ptr<int64_t>();
  for (int64_t r = 0; r < rows; ++r) {
    TORCH_CHECK(ids[r] >= 0 && ids[r] < vocab, op, ": token_ids[", r, "] = ", ids[r],
                " is outside the vocabulary of ", vocab);
  }
  if (rows == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor ids_dev = index_on_device(token_ids, logits.device());
  C10_CUDA_CHECK(launch_token_logprobs(out.data_ptr<float>(), logits.data_ptr<float>(),
                                       ids_dev.data_ptr<int64_t>(), rows, vocab,
                                       logits.stride(0), stream_of(logits)));
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("token_logprobs", &token_logprobs);
}

}  // namespace corral::cuda
