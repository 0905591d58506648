// CPU kernel of add_lora: the batched multi-LoRA delta of one linear layer.
//
// Tokens are grouped by adapter slot (a counting sort) and cut into tiles of up to
// kTile tokens of one slot; a tile reads each adapter row once for all its tokens,
// so a segment of n tokens costs about n / kTile passes over the adapter's weights
// instead of n. The weights of one slot (rank 16, a few hundred columns) stay in
// L2, so the tiles of a segment run from cache. Math is float32 whatever the
// storage dtype; the shrink result is rounded to the storage dtype, as PEFT's
// lora_A output is.
#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
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

constexpr int64_t kTile = 4;
// Fewest tokens of one slot that run as a GEMM rather than as tiles.
constexpr int64_t kGemmMin = 16;

// tmp[i * width + j] = T(x[tokens[i]] . a[j]) for j < width.
template <typename T>
void shrink_tile(float* tmp, const T* x, int64_t x_stride, const int64_t* tokens, int64_t n,
                 const T* a, int64_t width, int64_t k_size) {
  const T* rows[kTile];
  for (int64_t i = 0; i < n; ++i) {
    rows[i] = x + tokens[i] * x_stride;
  }
  for (int64_t j = 0; j < width; ++j) {
    const T* arow = a + j * k_size;
    fVec acc[kTile];
    for (int64_t i = 0; i < n; ++i) {
      acc[i] = fVec(0.0f);
    }
    int64_t d = 0;
    for (; d + kVec <= k_size; d += kVec) {
      const fVec av = load_f32(arow + d);
      for (int64_t i = 0; i < n; ++i) {
        acc[i] = at::vec::fmadd(load_f32(rows[i] + d), av, acc[i]);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      float sum = acc[i].reduce_add();
      for (int64_t e = d; e < k_size; ++e) {
        sum += static_cast<float>(rows[i][e]) * static_cast<float>(arow[e]);
      }
      tmp[i * width + j] = round_to<T>(sum);
    }
  }
}

// out[tokens[i], c0:c1] += sum_k tmp[i * width + k0 + k] * b[k, c0:c1] for k < rank.
template <typename T>
void expand_tile(T* out, int64_t out_stride, const int64_t* tokens, int64_t n, const float* tmp,
                 int64_t width, int64_t k0, const T* b, int64_t rank, int64_t n_size, int64_t c0,
                 int64_t c1) {
  T* rows[kTile];
  for (int64_t i = 0; i < n; ++i) {
    rows[i] = out + tokens[i] * out_stride;
  }
  int64_t c = c0;
  for (; c + kVec <= c1; c += kVec) {
    fVec acc[kTile];
    for (int64_t i = 0; i < n; ++i) {
      acc[i] = fVec(0.0f);
    }
    for (int64_t k = 0; k < rank; ++k) {
      const fVec bv = load_f32(b + k * n_size + c);
      for (int64_t i = 0; i < n; ++i) {
        acc[i] = at::vec::fmadd(fVec(tmp[i * width + k0 + k]), bv, acc[i]);
      }
    }
    for (int64_t i = 0; i < n; ++i) {
      store_f32(rows[i] + c, load_f32(rows[i] + c) + acc[i]);
    }
  }
  for (; c < c1; ++c) {
    for (int64_t i = 0; i < n; ++i) {
      float sum = 0.0f;
      for (int64_t k = 0; k < rank; ++k) {
        sum += tmp[i * width + k0 + k] * static_cast<float>(b[k * n_size + c]);
      }
      rows[i][c] = static_cast<T>(static_cast<float>(rows[i][c]) + sum);
    }
  }
}

// One slot's tokens through torch's GEMMs: x_seg @ a^T, then one product per slice.
void gemm_segment(at::Tensor& out, const at::Tensor& x, const at::Tensor& a, const at::Tensor& b,
                  const int64_t* tokens, int64_t n, at::IntArrayRef output_slices, int64_t rank) {
  bool contiguous_run = true;
  for (int64_t i = 1; i < n && contiguous_run; ++i) {
    contiguous_run = tokens[i] == tokens[0] + i;
  }
  if (contiguous_run) {
    const at::Tensor xs = x.narrow(0, tokens[0], n);
    at::Tensor os = out.narrow(0, tokens[0], n);
    const at::Tensor shrunk = at::mm(xs, a.t());
    int64_t c0 = 0;
    for (size_t s = 0; s < output_slices.size(); ++s) {
      os.narrow(1, c0, output_slices[s])
          .addmm_(shrunk.narrow(1, static_cast<int64_t>(s) * rank, rank),
                  b.narrow(1, c0, output_slices[s]));
      c0 += output_slices[s];
    }
    return;
  }
  const at::Tensor index = at::from_blob(const_cast<int64_t*>(tokens), {n}, at::kLong);
  const at::Tensor shrunk = at::mm(x.index_select(0, index), a.t());
  at::Tensor delta = at::zeros({n, out.size(1)}, out.options());
  int64_t c0 = 0;
  for (size_t s = 0; s < output_slices.size(); ++s) {
    delta.narrow(1, c0, output_slices[s])
        .addmm_(shrunk.narrow(1, static_cast<int64_t>(s) * rank, rank),
                b.narrow(1, c0, output_slices[s]));
    c0 += output_slices[s];
  }
  out.index_add_(0, index, delta);
}

void check_lora_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), "add_lora: ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK(t.scalar_type() == dtype, "add_lora: ", name, " must have dtype ", dtype,
              " (the dtype of x), got ", t.scalar_type());
}

void add_lora(at::Tensor& out, const at::Tensor& x, const at::Tensor& lora_a,
              const at::Tensor& lora_b, const at::Tensor& token_slots,
              at::IntArrayRef output_slices) {
  const auto dtype = x.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "add_lora: x dtype must be float32, bfloat16 or float16, got ", dtype);
  check_lora_tensor(x, "x", dtype);
  check_lora_tensor(out, "out", dtype);
  check_lora_tensor(lora_a, "lora_a", dtype);
  check_lora_tensor(lora_b, "lora_b", dtype);
  TORCH_CHECK(token_slots.device().is_cpu(), "add_lora: token_slots must be a CPU tensor");
  TORCH_CHECK(token_slots.scalar_type() == at::kLong, "add_lora: token_slots must be int64, got ",
              token_slots.scalar_type());
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1,
              "add_lora: x must be [num_tokens, in_features], contiguous in its last dimension, "
              "got sizes ",
              x.sizes(), " strides ", x.strides());
  const int64_t num_tokens = x.size(0);
  const int64_t k_size = x.size(1);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == num_tokens && out.stride(1) == 1,
              "add_lora: out must be [num_tokens=", num_tokens,
              ", out_features], contiguous in its last dimension, got sizes ", out.sizes(),
              " strides ", out.strides());
  const int64_t n_size = out.size(1);
  TORCH_CHECK(lora_b.dim() == 3 && lora_b.size(2) == n_size && lora_b.is_contiguous(),
              "add_lora: lora_b must be a contiguous [max_loras, max_rank, out_features=", n_size,
              "], got ", lora_b.sizes());
  const int64_t max_loras = lora_b.size(0);
  const int64_t rank = lora_b.size(1);
  const int64_t num_slices = static_cast<int64_t>(output_slices.size());
  TORCH_CHECK(num_slices >= 1, "add_lora: output_slices must name at least one slice");
  int64_t total = 0;
  for (const int64_t s : output_slices) {
    TORCH_CHECK(s > 0, "add_lora: every output slice must be positive, got ", output_slices);
    total += s;
  }
  TORCH_CHECK(total == n_size, "add_lora: output_slices ", output_slices, " sum to ", total,
              ", not out_features=", n_size);
  const int64_t width = num_slices * rank;
  TORCH_CHECK(lora_a.dim() == 3 && lora_a.size(0) == max_loras && lora_a.size(1) == width &&
                  lora_a.size(2) == k_size && lora_a.is_contiguous(),
              "add_lora: lora_a must be a contiguous [max_loras=", max_loras,
              ", num_slices * max_rank=", width, ", in_features=", k_size, "], got ",
              lora_a.sizes());
  TORCH_CHECK(token_slots.dim() == 1 && token_slots.size(0) == num_tokens,
              "add_lora: token_slots must be [num_tokens=", num_tokens, "], got ",
              token_slots.sizes());
  const at::Tensor slots_c = token_slots.contiguous();
  const int64_t* slots = slots_c.const_data_ptr<int64_t>();
  // Counting sort by slot; checked before anything is read through a slot.
  std::vector<int64_t> counts(max_loras + 1, 0);
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] >= -1 && slots[t] < max_loras, "add_lora: token_slots[", t, "] = ",
                slots[t], " is outside [-1, max_loras=", max_loras, ")");
    if (slots[t] >= 0) {
      ++counts[slots[t] + 1];
    }
  }
  if (rank == 0 || k_size == 0) {
    return;
  }
  for (int64_t l = 0; l < max_loras; ++l) {
    counts[l + 1] += counts[l];
  }
  const int64_t num_adapted = counts[max_loras];
  if (num_adapted == 0) {
    return;
  }
  std::vector<int64_t> order(num_adapted);
  {
    std::vector<int64_t> next(counts.begin(), counts.end() - 1);
    for (int64_t t = 0; t < num_tokens; ++t) {
      if (slots[t] >= 0) {
        order[next[slots[t]]++] = t;
      }
    }
  }
  // Segments of kGemmMin tokens or more run as GEMMs (torch's BLAS, on views when
  // the segment is one run of consecutive tokens, as a prefill chunk is); shorter
  // ones as tiles of the hand-written kernel below, in parallel.
  struct Tile {
    int64_t begin;
    int64_t n;
    int64_t slot;
  };
  std::vector<Tile> tiles;
  tiles.reserve(num_adapted / kTile + max_loras);
  for (int64_t l = 0; l < max_loras; ++l) {
    const int64_t begin = counts[l];
    const int64_t n = counts[l + 1] - begin;
    if (n >= kGemmMin) {
      gemm_segment(out, x, lora_a[l], lora_b[l], order.data() + begin, n, output_slices, rank);
      continue;
    }
    for (int64_t i = begin; i < counts[l + 1]; i += kTile) {
      tiles.push_back({i, std::min<int64_t>(kTile, counts[l + 1] - i), l});
    }
  }
  if (tiles.empty()) {
    return;
  }
  const int64_t tile_work = kTile * width * (k_size + n_size);
  const int64_t grain = std::max<int64_t>(1, 262144 / std::max<int64_t>(tile_work, 1));
  dispatch_float_types(dtype, "add_lora", [&](auto tag) {
    using T = decltype(tag);
    const T* xp = x.const_data_ptr<T>();
    T* op = out.data_ptr<T>();
    const T* ap = lora_a.const_data_ptr<T>();
    const T* bp = lora_b.const_data_ptr<T>();
    const int64_t x_stride = x.stride(0);
    const int64_t out_stride = out.stride(0);
    at::parallel_for(0, static_cast<int64_t>(tiles.size()), grain, [&](int64_t b, int64_t e) {
      std::vector<float> tmp(kTile * width);
      for (int64_t w = b; w < e; ++w) {
        const Tile& tile = tiles[w];
        const int64_t* tokens = order.data() + tile.begin;
        shrink_tile<T>(tmp.data(), xp, x_stride, tokens, tile.n, ap + tile.slot * width * k_size,
                       width, k_size);
        const T* b_slot = bp + tile.slot * rank * n_size;
        int64_t c0 = 0;
        for (int64_t s = 0; s < num_slices; ++s) {
          const int64_t c1 = c0 + output_slices[s];
          expand_tile<T>(op, out_stride, tokens, tile.n, tmp.data(), width, s * rank, b_slot, rank,
                         n_size, c0, c1);
          c0 = c1;
        }
      }
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CPU, m) { m.impl("add_lora", &add_lora); }

}  // namespace corral
