// Prefill kernel: a tile of query tokens (all heads of one GQA group) against
// the keys they can see, in chunks of keys. Compute bound, so the two products
// per chunk (scores = Q K^T and out += P V) go to the BLAS sgemm that torch
// links (MKL on x86); keys and values are gathered from their blocks into a
// contiguous float32 tile first, which also converts bfloat16 / float16.
#pragma once

#include "attention_decode.h"
#include "vec_math.h"

#include <algorithm>
#include <cstdint>

extern "C" void sgemm_(const char* transa, const char* transb, const int* m, const int* n,
                       const int* k, const float* alpha, const float* a, const int* lda,
                       const float* b, const int* ldb, const float* beta, float* c,
                       const int* ldc);

namespace corral::cpu {

// Keys per chunk; rows per tile is kPrefillTileRows / group size query tokens.
constexpr int64_t kPrefillKeyChunk = 128;
constexpr int64_t kPrefillTileRows = 256;

// Row-major C[m, n] (= or +=) A[m, k] * op(B) with B[n, k] (transposed) or B[k, n].
inline void gemm_rowmajor(bool b_transposed, int64_t m, int64_t n, int64_t k, const float* a,
                          int64_t lda, const float* b, int64_t ldb, bool accumulate, float* c,
                          int64_t ldc) {
  // Column-major BLAS computes C^T = op(B)^T A^T, which is row-major C = A op(B).
  const char ta = b_transposed ? 'T' : 'N';
  const char tb = 'N';
  const int mm = static_cast<int>(n);
  const int nn = static_cast<int>(m);
  const int kk = static_cast<int>(k);
  const int ldb_i = static_cast<int>(ldb);
  const int lda_i = static_cast<int>(lda);
  const int ldc_i = static_cast<int>(ldc);
  const float alpha = 1.0f;
  const float beta = accumulate ? 1.0f : 0.0f;
  sgemm_(&ta, &tb, &mm, &nn, &kk, &alpha, b, &ldb_i, a, &lda_i, &beta, c, &ldc_i);
}

// Scratch of one prefill tile, sized for the largest tile.
struct PrefillScratch {
  float* q;       // [rows, head_size]
  float* k;       // [kPrefillKeyChunk, head_size]
  float* v;       // [kPrefillKeyChunk, head_size]
  float* scores;  // [rows, kPrefillKeyChunk]
  PartialState state;

  static int64_t floats_needed(int64_t rows, int64_t head_size) {
    return rows * head_size * 2 + kPrefillKeyChunk * head_size * 2 +
           rows * kPrefillKeyChunk + rows * 2;
  }
  static PrefillScratch carve(float* base, int64_t rows, int64_t head_size) {
    PrefillScratch s;
    s.q = base;
    s.k = s.q + rows * head_size;
    s.v = s.k + kPrefillKeyChunk * head_size;
    s.scores = s.v + kPrefillKeyChunk * head_size;
    s.state.acc = s.scores + rows * kPrefillKeyChunk;
    s.state.max = s.state.acc + rows * head_size;
    s.state.sum = s.state.max + rows;
    return s;
  }
};

// Causal attention of query rows already loaded into scratch.q (scaled float,
// row r = token r / group, head r % group) for `num_tokens` consecutive tokens
// whose first sits at position `first_pos`. Keys at positions p - window < j <= p
// are visible to a token at p (window <= 0: all j <= p). Fills scratch.state.
template <typename T>
void prefill_attend(const PagedView<T>& view, int64_t group, int64_t num_tokens,
                    int64_t first_pos, int64_t window, PrefillScratch& s) {
  const int64_t hs = view.head_size;
  const int64_t rows = num_tokens * group;
  for (int64_t r = 0; r < rows; ++r) {
    s.state.max[r] = kNegInf;
    s.state.sum[r] = 0.0f;
    std::fill(s.state.acc + r * hs, s.state.acc + (r + 1) * hs, 0.0f);
  }
  const int64_t key_end = first_pos + num_tokens;
  const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first_pos - window + 1) : 0;
  for (int64_t c0 = key_begin; c0 < key_end; c0 += kPrefillKeyChunk) {
    const int64_t n = std::min(kPrefillKeyChunk, key_end - c0);
    for (int64_t j = 0; j < n; ++j) {
      convert_row(s.k + j * hs, view.key_row(c0 + j), hs, 1.0f);
      convert_row(s.v + j * hs, view.value_row(c0 + j), hs, 1.0f);
    }
    gemm_rowmajor(true, rows, n, hs, s.q, hs, s.k, hs, false, s.scores, kPrefillKeyChunk);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = first_pos + r / group;
      float* row = s.scores + r * kPrefillKeyChunk;
      const int64_t hi = std::clamp<int64_t>(pos + 1 - c0, 0, n);
      const int64_t lo =
          window > 0 ? std::clamp<int64_t>(pos - window + 1 - c0, 0, hi) : int64_t{0};
      std::fill(row, row + lo, 0.0f);
      std::fill(row + hi, row + n, 0.0f);
      if (lo == hi) {
        continue;
      }
      const float new_max = std::max(s.state.max[r], max_of(row + lo, hi - lo));
      const float rescale = std::exp(s.state.max[r] - new_max);
      s.state.sum[r] = s.state.sum[r] * rescale + exp_shift_sum(row + lo, hi - lo, new_max);
      s.state.max[r] = new_max;
      if (rescale != 1.0f) {
        scale_row(s.state.acc + r * hs, hs, rescale);
      }
    }
    gemm_rowmajor(false, rows, hs, n, s.scores, kPrefillKeyChunk, s.v, hs, true, s.state.acc,
                  hs);
  }
}

}  // namespace corral::cpu
