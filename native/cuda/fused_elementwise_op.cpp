// The fused element-wise ops for CUDA tensors: rms_norm, fused_add_rms_norm,
// silu_and_mul, gelu_tanh, rotary_embedding and token_logprobs. The argument checks
// are the CPU kernels' own (../fused_op_checks.h), so one set of bad-input tests
// holds both backends.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <vector>

#include "../fused_op_checks.h"
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

// The device half of the shared checks: every tensor of the op on one CUDA device,
// the first one checked (`like_name`: the op's main input) deciding which.
auto on_cuda(const char* op, const at::Tensor& like, const char* like_name) {
  return [op, &like, like_name](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
    TORCH_CHECK(t.device() == like.device(), op, ": ", name, " is on ", t.device(), " but ",
                like_name, " is on ", like.device());
  };
}

// Collapses the leading dimensions of t into at most two levels of strides.
RowLayout row_layout(const at::Tensor& t, const char* op, const char* name) {
  fused_checks::check_last_dim_contiguous(t, op, name);
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

cudaStream_t stream_of(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index());
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
              double epsilon) {
  constexpr const char* op = "rms_norm";
  fused_checks::check_norm_args(out, input, weight, epsilon, op, "out",
                                on_cuda(op, input, "input"));
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
  fused_checks::check_norm_args(residual, input, weight, epsilon, op, "residual",
                                on_cuda(op, input, "input"));
  fused_checks::check_distinct(input, residual, op);
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

void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  constexpr const char* op = "silu_and_mul";
  fused_checks::check_gated_args(out, input, op, on_cuda(op, input, "input"));
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
  fused_checks::check_same_shape_args(out, input, op, on_cuda(op, input, "input"));
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
  const fused_checks::HeadLayout layout =
      fused_checks::head_layout(t, num_tokens, head_size, op, name);
  return {t.data_ptr(), layout.num_heads, layout.token_stride, layout.head_stride};
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
  constexpr const char* op = "rotary_embedding";
  const int64_t rot_dim = fused_checks::check_rotary_args(query, key, head_size, cos_sin_cache,
                                                           op, on_cuda(op, query, "query"));
  const FusedDtype dtype = fused_dtype(query, op, "query");
  const bool cache_is_float = cos_sin_cache.scalar_type() == at::kFloat;
  // Positions index the table: checked on the host like every other index
  // (one small copy and a synchronisation when they live on the device).
  const at::Tensor pos_host =
      index_on_host(positions, op, "positions", at::kLong, query.device());
  fused_checks::check_positions(pos_host, cos_sin_cache.size(0), op);
  const int64_t num_tokens = pos_host.size(0);
  const HeadRows q = head_rows(query, num_tokens, head_size, op, "query");
  const HeadRows k = head_rows(key, num_tokens, head_size, op, "key");
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
  fused_checks::check_token_logprobs_args(out, logits, op, on_cuda(op, logits, "logits"));
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const at::Tensor ids_host =
      index_on_host(token_ids, op, "token_ids", at::kLong, logits.device());
  fused_checks::check_token_ids(ids_host, rows, vocab, op);
  if (rows == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(logits.device());
  const at::Tensor ids_dev = index_on_device(token_ids, logits.device());
  C10_CUDA_CHECK(launch_token_logprobs(out.data_ptr<float>(), logits.data_ptr<float>(),
                                       ids_dev.data_ptr<int64_t>(), rows, vocab,
                                       logits.stride(0), stream_of(logits)));
}

void greedy_sample(at::Tensor& token_ids, at::Tensor& logprobs, const at::Tensor& logits) {
  constexpr const char* op = "greedy_sample";
  fused_checks::check_greedy_sample_args(token_ids, logprobs, logits, op,
                                         on_cuda(op, logits, "logits"));
  const int64_t rows = logits.size(0);
  if (rows == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(logits.device());
  C10_CUDA_CHECK(launch_greedy_sample(fused_dtype(logits, op, "logits"),
                                      token_ids.data_ptr<int64_t>(), logprobs.data_ptr<float>(),
                                      logits.data_ptr(), rows, logits.size(1), logits.stride(0),
                                      stream_of(logits)));
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("token_logprobs", &token_logprobs);
  m.impl("greedy_sample", &greedy_sample);
}

}  // namespace corral::cuda
