// Prefill kernel for bfloat16 on CPUs with AMX: the same tiles and online softmax
// as attention_prefill.h, but both products run on bfloat16 operands with float32
// accumulation through torch's batch-reduce GEMM microkernel
// (at::native::cpublas::brgemm, oneDNN's ukernel, AMX tiles). Keys and values are
// gathered from their blocks and packed into the pair-interleaved (VNNI) layout
// the tiles read; the scores, the softmax state and the output accumulator stay in
// float32, and the probabilities are rounded to bfloat16 for the second product
// (as flash-attention kernels do on GPUs).
#pragma once

#include "attention_decode.h"
#include "vec_math.h"

#include <ATen/native/CPUBlas.h>
#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace corral::cpu {

// Keys per chunk of the AMX path: a multiple of kAmxColumns, padded with zero keys
// at the end of a range.
constexpr int64_t kAmxKeyChunk = 128;
// Columns of B per microkernel call: the packed B layout takes a leading dimension of
// 16, 32, 48 or 64 only, so wider products go in column blocks of at most 64.
constexpr int64_t kAmxColumns = 64;

// C[m, 0:n] (+)= A[m, k] B[k, 0:n], bfloat16 operands with float32 C, B row-major
// with leading dimension ldb; n is a multiple of 16. Each block of up to 64 columns
// of B is packed into `packed` (k * 64 elements) and multiplied on its own.
inline void amx_gemm(int64_t m, int64_t n, int64_t k, const at::BFloat16* a, int64_t lda,
                     const at::BFloat16* b, int64_t ldb, bool accumulate, float* c,
                     int64_t ldc, at::BFloat16* packed) {
  namespace blas = at::native::cpublas;
  for (int64_t n0 = 0; n0 < n; n0 += kAmxColumns) {
    const int64_t nb = std::min(kAmxColumns, n - n0);
    blas::pack(k, nb, ldb, nb, at::kBFloat16, at::kBFloat16, b + n0, packed);
    blas::brgemm(m, nb, k, lda, nb, ldc, accumulate, a, packed, c + n0);
  }
}

// Whether this CPU runs the bfloat16 brgemm microkernel (AMX present, oneDNN's
// ukernel built into torch). Asked once.
inline bool amx_bf16_available() {
  static const bool available = at::native::cpublas::could_pack(at::kBFloat16);
  return available;
}

// Per-thread scratch of the AMX path, sized for the largest tile.
struct AmxPrefillScratch {
  std::vector<at::BFloat16> q;       // [rows, head_size] raw query rows
  std::vector<at::BFloat16> keys_t;  // [head_size, chunk] keys, transposed
  std::vector<at::BFloat16> values;  // [chunk, head_size]
  std::vector<at::BFloat16> packed;  // one packed column block of either
  std::vector<at::BFloat16> probs;   // [rows, chunk]
  std::vector<float> scores;         // [rows, chunk]
  std::vector<float> acc;            // [rows, head_size]
  std::vector<float> max;            // [rows]
  std::vector<float> sum;            // [rows]

  AmxPrefillScratch(int64_t rows, int64_t head_size)
      : q(rows * head_size),
        keys_t(head_size * kAmxKeyChunk),
        values(kAmxKeyChunk * head_size),
        packed(std::max(head_size, kAmxKeyChunk) * kAmxColumns),
        probs(rows * kAmxKeyChunk),
        scores(rows * kAmxKeyChunk),
        acc(rows * head_size),
        max(rows),
        sum(rows) {}

  PartialState state() { return PartialState{max.data(), sum.data(), acc.data()}; }
};

// Causal attention of the raw bfloat16 query rows in scratch.q (row r = token
// r / group, head r % group) for `num_tokens` consecutive tokens whose first sits
// at `first_pos`; `scale` multiplies the scores. Keys at p - window < j <= p are
// visible to a token at p (window <= 0: all j <= p). Fills scratch.state().
inline void prefill_attend_amx(const PagedView<at::BFloat16>& view, int64_t group,
                               int64_t num_tokens, int64_t first_pos, int64_t window,
                               float scale, AmxPrefillScratch& s) {
  const int64_t hs = view.head_size;
  const int64_t rows = num_tokens * group;
  constexpr int64_t C = kAmxKeyChunk;
  for (int64_t r = 0; r < rows; ++r) {
    s.max[r] = kNegInf;
    s.sum[r] = 0.0f;
  }
  std::fill(s.acc.begin(), s.acc.begin() + rows * hs, 0.0f);
  const int64_t key_end = first_pos + num_tokens;
  const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first_pos - window + 1) : 0;
  for (int64_t c0 = key_begin; c0 < key_end; c0 += C) {
    const int64_t n = std::min(C, key_end - c0);
    // Keys transposed to [head_size, C] and values as [C, head_size]; the padding
    // past n is zero so that a masked (zero) probability never meets a NaN.
    for (int64_t j = 0; j < n; ++j) {
      const at::BFloat16* k = view.key_row(c0 + j);
      for (int64_t d = 0; d < hs; ++d) {
        s.keys_t[d * C + j] = k[d];
      }
      std::memcpy(s.values.data() + j * hs, view.value_row(c0 + j), hs * sizeof(at::BFloat16));
    }
    if (n < C) {
      for (int64_t d = 0; d < hs; ++d) {
        std::fill(s.keys_t.begin() + d * C + n, s.keys_t.begin() + (d + 1) * C,
                  at::BFloat16(0.0f));
      }
      std::fill(s.values.begin() + n * hs, s.values.begin() + C * hs, at::BFloat16(0.0f));
    }
    // scores[rows, C] = Q[rows, hs] K^T[hs, C]
    amx_gemm(rows, C, hs, s.q.data(), hs, s.keys_t.data(), C, false, s.scores.data(), C,
             s.packed.data());
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = first_pos + r / group;
      float* row = s.scores.data() + r * C;
      const int64_t hi = std::clamp<int64_t>(pos + 1 - c0, 0, n);
      const int64_t lo =
          window > 0 ? std::clamp<int64_t>(pos - window + 1 - c0, 0, hi) : int64_t{0};
      at::BFloat16* p = s.probs.data() + r * C;
      if (lo == hi) {
        std::fill(p, p + C, at::BFloat16(0.0f));
        continue;
      }
      std::fill(row, row + lo, 0.0f);
      std::fill(row + hi, row + C, 0.0f);
      scale_row(row, C, scale);
      const float new_max = std::max(s.max[r], max_of(row + lo, hi - lo));
      const float rescale = std::exp(s.max[r] - new_max);
      s.sum[r] = s.sum[r] * rescale + exp_shift_sum(row + lo, hi - lo, new_max);
      s.max[r] = new_max;
      if (rescale != 1.0f) {
        scale_row(s.acc.data() + r * hs, hs, rescale);
      }
      store_row(p, row, C, 1.0f);
    }
    // acc[rows, hs] += P[rows, C] V[C, hs]
    amx_gemm(rows, hs, C, s.probs.data(), C, s.values.data(), hs, true, s.acc.data(), hs,
             s.packed.data());
  }
}

}  // namespace corral::cpu
