// CPU kernels of the fused element-wise ops: rms_norm, fused_add_rms_norm,
// silu_and_mul, gelu_tanh, rotary_embedding, and the sampler's token_logprobs. Each one reads a row once (or
// twice from L1) where the op-by-op torch code makes a pass and an allocation per
// step. Math is float32 whatever the storage dtype; where transformers rounds an
// intermediate to the activation dtype (the normalized row before the weight, the
// activation before the product), the kernels round at the same place so that
// bfloat16 results match it as closely as float32 ones do.
#include "../fused_op_checks.h"
#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

namespace corral {
namespace {

using cpu::fVec;
using cpu::kVec;
using cpu::load_f32;
using cpu::dispatch_float_types;
using cpu::round_to;
using cpu::store_f32;


// The device half of the shared checks: every tensor of a CPU op lives on the CPU.
auto on_cpu(const char* op) {
  return [op](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  };
}


// Row r of a tensor seen as [rows, last]: the element offset of its first entry.
// Leading dimensions may have any strides (a q/k view of a fused qkv output);
// the last dimension must be contiguous.
class Rows {
 public:
  Rows(const at::Tensor& t, const char* op, const char* name)
      : sizes_(t.sizes().begin(), t.sizes().end() - 1),
        strides_(t.strides().begin(), t.strides().end() - 1) {
    fused_checks::check_last_dim_contiguous(t, op, name);
    count_ = 1;
    for (const int64_t s : sizes_) {
      count_ *= s;
    }
  }
  int64_t count() const { return count_; }
  int64_t offset(int64_t r) const {
    int64_t off = 0;
    for (int64_t d = static_cast<int64_t>(sizes_.size()) - 1; d >= 0; --d) {
      off += (r % sizes_[d]) * strides_[d];
      r /= sizes_[d];
    }
    return off;
  }

 private:
  std::vector<int64_t> sizes_;
  std::vector<int64_t> strides_;
  int64_t count_;
};

// Enough rows per task that it outweighs the thread pool's wake-up (rows are
// weighed by the elements they write). A decode step's rows (64 tokens: 32K to
// 90K elements) stay on the calling thread: on a shared machine a parallel region
// waits for a partner thread that may be descheduled, which cost up to 30 ms
// against 0.1 ms of work (docs/kernels.md); a prefill chunk still splits.
constexpr int64_t kElemsPerTask = 131072;

int64_t grain_for(int64_t row_elems) {
  return std::max<int64_t>(1, kElemsPerTask / std::max<int64_t>(row_elems, 1));
}

template <typename T>
float sum_of_squares(const T* x, int64_t n) {
  fVec acc(0.0f);
  int64_t d = 0;
  for (; d + kVec <= n; d += kVec) {
    const fVec v = load_f32(x + d);
    acc = at::vec::fmadd(v, v, acc);
  }
  float sum = acc.reduce_add();
  for (; d < n; ++d) {
    const float v = static_cast<float>(x[d]);
    sum += v * v;
  }
  return sum;
}

// out = T(T(x * inv_rms) * weight), transformers' order of roundings.
template <typename T>
void normalize_row(T* out, const T* x, const T* weight, int64_t n, float inv_rms) {
  const fVec r(inv_rms);
  int64_t d = 0;
  for (; d + kVec <= n; d += kVec) {
    store_f32(out + d, round_to<T>(load_f32(x + d) * r) * load_f32(weight + d));
  }
  for (; d < n; ++d) {
    out[d] = static_cast<T>(round_to<T>(static_cast<float>(x[d]) * inv_rms) *
                            static_cast<float>(weight[d]));
  }
}

void rms_norm(at::Tensor& out, const at::Tensor& input, const at::Tensor& weight,
              double epsilon) {
  constexpr const char* op = "rms_norm";
  fused_checks::check_norm_args(out, input, weight, epsilon, op, "out", on_cpu(op));
  const Rows in_rows(input, op, "input");
  const Rows out_rows(out, op, "out");
  const int64_t n = input.size(-1);
  const float eps = static_cast<float>(epsilon);
  dispatch_float_types(input.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    const auto* x = input.const_data_ptr<scalar_t>();
    const auto* w = weight.const_data_ptr<scalar_t>();
    auto* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, in_rows.count(), grain_for(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const scalar_t* row = x + in_rows.offset(r);
        const float inv = 1.0f / std::sqrt(sum_of_squares(row, n) / n + eps);
        normalize_row(o + out_rows.offset(r), row, w, n, inv);
      }
    });
  });
}

void fused_add_rms_norm(at::Tensor& input, at::Tensor& residual, const at::Tensor& weight,
                        double epsilon) {
  constexpr const char* op = "fused_add_rms_norm";
  fused_checks::check_norm_args(residual, input, weight, epsilon, op, "residual", on_cpu(op));
  fused_checks::check_distinct(input, residual, op);
  const Rows in_rows(input, op, "input");
  const Rows res_rows(residual, op, "residual");
  const int64_t n = input.size(-1);
  const float eps = static_cast<float>(epsilon);
  dispatch_float_types(input.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    auto* x = input.data_ptr<scalar_t>();
    auto* res = residual.data_ptr<scalar_t>();
    const auto* w = weight.const_data_ptr<scalar_t>();
    at::parallel_for(0, in_rows.count(), grain_for(n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        scalar_t* xr = x + in_rows.offset(r);
        scalar_t* rr = res + res_rows.offset(r);
        // The sum is stored first and normalized from storage, so the norm sees
        // the rounded residual a separate add would have produced.
        int64_t d = 0;
        for (; d + kVec <= n; d += kVec) {
          store_f32(rr + d, load_f32(xr + d) + load_f32(rr + d));
        }
        for (; d < n; ++d) {
          rr[d] = static_cast<scalar_t>(static_cast<float>(xr[d]) + static_cast<float>(rr[d]));
        }
        const float inv = 1.0f / std::sqrt(sum_of_squares(rr, n) / n + eps);
        normalize_row(xr, rr, w, n, inv);
      }
    });
  });
}

// out = T(T(silu(gate)) * up) with gate = input[..., :d] and up = input[..., d:].
void silu_and_mul(at::Tensor& out, const at::Tensor& input) {
  constexpr const char* op = "silu_and_mul";
  fused_checks::check_gated_args(out, input, op, on_cpu(op));
  const Rows in_rows(input, op, "input");
  const Rows out_rows(out, op, "out");
  const int64_t d = out.size(-1);
  dispatch_float_types(input.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = scalar_t;
    const auto* x = input.const_data_ptr<T>();
    auto* o = out.data_ptr<T>();
    at::parallel_for(0, in_rows.count(), grain_for(d), [&](int64_t begin, int64_t end) {
      const fVec one(1.0f);
      for (int64_t r = begin; r < end; ++r) {
        const T* gate = x + in_rows.offset(r);
        const T* up = gate + d;
        T* dst = o + out_rows.offset(r);
        int64_t i = 0;
        for (; i + kVec <= d; i += kVec) {
          const fVec g = load_f32(gate + i);
          fVec act;
          if constexpr (std::is_same_v<T, float>) {
            act = g / (one + g.neg().exp());
          } else {
            act = cpu::silu_16bit(g);
          }
          store_f32(dst + i, round_to<T>(act) * load_f32(up + i));
        }
        for (; i < d; ++i) {
          const float g = static_cast<float>(gate[i]);
          const float act = g / (1.0f + std::exp(-g));
          dst[i] = static_cast<T>(round_to<T>(act) * static_cast<float>(up[i]));
        }
      }
    });
  });
}

// The tanh approximation of GELU (GPT-2's gelu_new), out-of-place.
void gelu_tanh(at::Tensor& out, const at::Tensor& input) {
  constexpr const char* op = "gelu_tanh";
  fused_checks::check_same_shape_args(out, input, op, on_cpu(op));
  const Rows in_rows(input, op, "input");
  const Rows out_rows(out, op, "out");
  const int64_t n = input.size(-1);
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  dispatch_float_types(input.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = scalar_t;
    const auto* x = input.const_data_ptr<T>();
    auto* o = out.data_ptr<T>();
    at::parallel_for(0, in_rows.count(), grain_for(n), [&](int64_t begin, int64_t end) {
      const fVec half(0.5f), one(1.0f), beta(kBeta), kappa(kKappa);
      for (int64_t r = begin; r < end; ++r) {
        const T* src = x + in_rows.offset(r);
        T* dst = o + out_rows.offset(r);
        int64_t i = 0;
        for (; i + kVec <= n; i += kVec) {
          const fVec v = load_f32(src + i);
          const fVec inner = beta * (v + kappa * v * v * v);
          store_f32(dst + i, half * v * (one + inner.tanh()));
        }
        for (; i < n; ++i) {
          const float v = static_cast<float>(src[i]);
          dst[i] = static_cast<T>(0.5f * v * (1.0f + std::tanh(kBeta * (v + kKappa * v * v * v))));
        }
      }
    });
  });
}

using fused_checks::HeadLayout;

template <typename T, typename C>
void rotate_head(T* x, const C* cos, const C* sin, int64_t rot_dim, bool is_neox) {
  const int64_t half = rot_dim / 2;
  if (is_neox) {
    // Rotate-half layout: entry i pairs with entry i + half.
    int64_t i = 0;
    for (; i + kVec <= half; i += kVec) {
      const fVec c = load_f32(cos + i);
      const fVec s = load_f32(sin + i);
      const fVec x1 = load_f32(x + i);
      const fVec x2 = load_f32(x + half + i);
      store_f32(x + i, x1 * c - x2 * s);
      store_f32(x + half + i, x2 * c + x1 * s);
    }
    for (; i < half; ++i) {
      const float c = static_cast<float>(cos[i]);
      const float s = static_cast<float>(sin[i]);
      const float x1 = static_cast<float>(x[i]);
      const float x2 = static_cast<float>(x[half + i]);
      x[i] = static_cast<T>(x1 * c - x2 * s);
      x[half + i] = static_cast<T>(x2 * c + x1 * s);
    }
  } else {
    // GPT-J layout: entries 2i and 2i + 1 form a pair.
    for (int64_t i = 0; i < half; ++i) {
      const float c = static_cast<float>(cos[i]);
      const float s = static_cast<float>(sin[i]);
      const float x1 = static_cast<float>(x[2 * i]);
      const float x2 = static_cast<float>(x[2 * i + 1]);
      x[2 * i] = static_cast<T>(x1 * c - x2 * s);
      x[2 * i + 1] = static_cast<T>(x2 * c + x1 * s);
    }
  }
}

void rotary_embedding(const at::Tensor& positions, at::Tensor& query, at::Tensor& key,
                      int64_t head_size, const at::Tensor& cos_sin_cache, bool is_neox) {
  constexpr const char* op = "rotary_embedding";
  const auto on_device = on_cpu(op);
  on_device(positions, "positions");
  const int64_t rot_dim =
      fused_checks::check_rotary_args(query, key, head_size, cos_sin_cache, op, on_device);
  TORCH_CHECK(positions.scalar_type() == at::kLong, op, ": positions must be int64, got ",
              positions.scalar_type());
  const at::Tensor pos_c = positions.contiguous();
  fused_checks::check_positions(pos_c, cos_sin_cache.size(0), op);
  const int64_t num_tokens = pos_c.size(0);
  const HeadLayout q = fused_checks::head_layout(query, num_tokens, head_size, op, "query");
  const HeadLayout k = fused_checks::head_layout(key, num_tokens, head_size, op, "key");
  const int64_t* pos = pos_c.const_data_ptr<int64_t>();
  const int64_t heads = q.num_heads + k.num_heads;
  dispatch_float_types(query.scalar_type(), op, [&](auto tag) {
    using scalar_t = decltype(tag);
    using T = scalar_t;
    auto* qp = query.data_ptr<T>();
    auto* kp = key.data_ptr<T>();
    auto run = [&](const auto* table) {
      at::parallel_for(0, num_tokens * heads, grain_for(head_size), [&](int64_t b, int64_t e) {
        for (int64_t item = b; item < e; ++item) {
          const int64_t t = item / heads;
          const int64_t h = item % heads;
          const auto* cos = table + pos[t] * rot_dim;
          const auto* sin = cos + rot_dim / 2;
          T* x = h < q.num_heads ? qp + t * q.token_stride + h * q.head_stride
                                 : kp + t * k.token_stride + (h - q.num_heads) * k.head_stride;
          rotate_head(x, cos, sin, rot_dim, is_neox);
        }
      });
    };
    if (cos_sin_cache.scalar_type() == at::kFloat) {
      run(cos_sin_cache.const_data_ptr<float>());
    } else {
      run(cos_sin_cache.const_data_ptr<T>());
    }
  });
}

// out[r] = logits[r, token_ids[r]] - logsumexp(logits[r]): one read of each row,
// no [rows, vocab] result written (what log_softmax + gather would cost).
void token_logprobs(at::Tensor& out, const at::Tensor& logits, const at::Tensor& token_ids) {
  constexpr const char* op = "token_logprobs";
  const auto on_device = on_cpu(op);
  fused_checks::check_token_logprobs_args(out, logits, op, on_device);
  on_device(token_ids, "token_ids");
  TORCH_CHECK(token_ids.scalar_type() == at::kLong, op, ": token_ids must be int64, got ",
              token_ids.scalar_type());
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const at::Tensor ids_c = token_ids.contiguous();
  fused_checks::check_token_ids(ids_c, rows, vocab, op);
  const int64_t* ids = ids_c.const_data_ptr<int64_t>();
  const float* x = logits.const_data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t stride = logits.stride(0);
  at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const float* row = x + r * stride;
      fVec vmax(cpu::kNegInf);
      int64_t i = 0;
      for (; i + kVec <= vocab; i += kVec) {
        vmax = at::vec::maximum(vmax, fVec::loadu(row + i));
      }
      float m = vmax.reduce_max();
      for (; i < vocab; ++i) {
        m = std::max(m, row[i]);
      }
      const fVec vm(m);
      fVec acc(0.0f);
      i = 0;
      for (; i + kVec <= vocab; i += kVec) {
        acc = acc + (fVec::loadu(row + i) - vm).exp();
      }
      float sum = acc.reduce_add();
      for (; i < vocab; ++i) {
        sum += std::exp(row[i] - m);
      }
      o[r] = (row[ids[r]] - m) - std::log(sum);
    }
  });
}

// Greedy rows: token_ids[r] = the first index of the row's maximum (the first NaN
// if there is one, as torch.max), logprobs[r] = its log-probability, computed as
// token_logprobs computes it. Two passes over a row: the max, then the first index
// holding it and the sum of exponentials.
void greedy_sample(at::Tensor& token_ids, at::Tensor& logprobs, const at::Tensor& logits) {
  constexpr const char* op = "greedy_sample";
  fused_checks::check_greedy_sample_args(token_ids, logprobs, logits, op, on_cpu(op));
  const int64_t rows = logits.size(0);
  const int64_t vocab = logits.size(1);
  const int64_t stride = logits.stride(0);
  int64_t* ids = token_ids.data_ptr<int64_t>();
  float* lp = logprobs.data_ptr<float>();
  dispatch_float_types(logits.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    const T* x = logits.const_data_ptr<T>();
    at::parallel_for(0, rows, grain_for(vocab), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        const T* row = x + r * stride;
        fVec vmax(cpu::kNegInf);
        int64_t i = 0;
        for (; i + kVec <= vocab; i += kVec) {
          vmax = at::vec::maximum(vmax, load_f32(row + i));  // propagates NaN
        }
        float m = at::vec::vec_reduce_all<float>(
            [](const fVec& a, const fVec& b) { return at::vec::maximum(a, b); }, vmax);
        for (; i < vocab; ++i) {
          const float v = static_cast<float>(row[i]);
          m = std::isnan(v) || std::isnan(m) ? std::numeric_limits<float>::quiet_NaN()
                                              : std::max(m, v);
        }
        if (std::isnan(m)) {
          int64_t first = 0;
          while (!std::isnan(static_cast<float>(row[first]))) {
            ++first;
          }
          ids[r] = first;
          lp[r] = m;
          continue;
        }
        const fVec vm(m);
        fVec acc(0.0f);
        int64_t found = -1;
        i = 0;
        for (; i + kVec <= vocab; i += kVec) {
          const fVec v = load_f32(row + i);
          if (found < 0) {
            // zero_mask: a bit for each lane that is zero, i.e. equal to the max.
            const int equal = (v != vm).zero_mask();
            if (equal != 0) {
              found = i + __builtin_ctz(static_cast<unsigned>(equal));
            }
          }
          acc = acc + (v - vm).exp();
        }
        float sum = acc.reduce_add();
        for (; i < vocab; ++i) {
          const float v = static_cast<float>(row[i]);
          if (found < 0 && v == m) {
            found = i;
          }
          sum += std::exp(v - m);
        }
        ids[r] = found;
        lp[r] = -std::log(sum);
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CPU, m) {
  m.impl("rms_norm", &rms_norm);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm);
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("gelu_tanh", &gelu_tanh);
  m.impl("rotary_embedding", &rotary_embedding);
  m.impl("token_logprobs", &token_logprobs);
  m.impl("greedy_sample", &greedy_sample);
}

}  // namespace corral
