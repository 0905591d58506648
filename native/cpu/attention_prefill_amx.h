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
#include <type_traits>
#include <vector>

namespace corral::cpu {

// Keys per chunk of the AMX path: a multiple of kAmxColumns, padded with zero keys
// at the end of a range.
constexpr int64_t kAmxKeyChunk = 128;
// Columns of B per microkernel call: the packed B layout takes a leading dimension of
// 16, 32, 48 or 64 only, so wider products go in column blocks of at most 64.
constexpr int64_t kAmxColumns = 64;
static_assert(kAmxKeyChunk % kAmxColumns == 0, "key chunks are whole column blocks");

// The packed (VNNI) layout of a B[k, n] block with leading dimension n: element
// (i, j) at (i / 2) * 2n + 2j + i % 2, i.e. the 32-bit word (i / 2) * n + j holds
// rows i and i + 1 of column j: the layout cpublas::pack writes (the op tests,
// which take this path on AMX machines, fail on any other).

// Whether this CPU runs the bfloat16 brgemm microkernel (AMX present, oneDNN's
// ukernel built into torch). Asked once.
inline bool amx_bf16_available() {
  static const bool available = at::native::cpublas::could_pack(at::kBFloat16);
  return available;
}

// Per-thread scratch of the AMX path, sized for the largest tile.
struct AmxPrefillScratch {
  std::vector<at::BFloat16> q;       // [rows, head_size] raw query rows
  std::vector<uint32_t> keys;        // K^T packed: per block of 64 keys, [head_size / 2, 64] words
  std::vector<uint32_t> values;      // V packed: per block of <= 64 dims, [chunk / 2, dims] words
  std::vector<at::BFloat16> probs;   // [rows, chunk]
  std::vector<float> scores;         // [rows, chunk]
  std::vector<float> acc;            // [rows, head_size]
  std::vector<float> max;            // [rows]
  std::vector<float> sum;            // [rows]

  AmxPrefillScratch(int64_t rows, int64_t head_size)
      : q(rows * head_size),
        keys(head_size / 2 * kAmxKeyChunk),
        values(kAmxKeyChunk / 2 * head_size),
        probs(rows * kAmxKeyChunk),
        scores(rows * kAmxKeyChunk),
        acc(rows * head_size),
        max(rows),
        sum(rows) {}
};

// Bits of x as bfloat16; exact for float8 values (fewer mantissa bits, and an
// exponent range inside bfloat16's), so the low half is simply dropped.
inline uint32_t bf16_bits(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  return bits >> 16;
}

// Two consecutive elements of a cache row as one word of bfloat16 pairs.
template <typename KV>
inline uint32_t pair_word(const KV* row, int64_t w) {
  if constexpr (std::is_same_v<KV, at::BFloat16>) {
    uint32_t word;
    std::memcpy(&word, row + 2 * w, sizeof(word));
    return word;
  } else {
    return bf16_bits(static_cast<float>(row[2 * w])) |
           (bf16_bits(static_cast<float>(row[2 * w + 1])) << 16);
  }
}

// One element of a cache row as bfloat16 bits.
template <typename KV>
inline uint32_t element_bits(const KV* row, int64_t d) {
  if constexpr (std::is_same_v<KV, at::BFloat16>) {
    return reinterpret_cast<const uint16_t*>(row)[d];
  } else {
    return bf16_bits(static_cast<float>(row[d]));
  }
}

#if defined(CPU_CAPABILITY_AVX512)
// Whether rows of this cache type load as bfloat16 vectors (row_bf16x64 below):
// bfloat16 rows, and float8 rows where the lookup tables of float8_rows.h exist.
template <typename KV>
inline constexpr bool kVectorRows =
    std::is_same_v<KV, at::BFloat16> || (kFloat8Tables && is_float8_v<KV>);

// Elements d .. d + 63 of a cache row as bfloat16, in natural order: `first` holds
// 0..31, `second` 32..63. (A float8 chunk comes out of the lookup with lane L
// holding elements 16 L + 0..7 in `lo` and 16 L + 8..15 in `hi`; two permutes of
// 128-bit halves put them back in order.)
// Two vectors of 32-bit words whose 128-bit lane L holds pieces 2 L and 2 L + 1 of
// a 64-byte run (lo: the even 16-byte pieces, hi: the odd ones, in-lane unpacks'
// output) put back in order: `first` gets pieces 0..3, `second` pieces 4..7.
inline void interleave_lanes(__m512i lo, __m512i hi, __m512i& first, __m512i& second) {
  first = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(0, 1, 8, 9, 2, 3, 10, 11), hi);
  second = _mm512_permutex2var_epi64(lo, _mm512_setr_epi64(4, 5, 12, 13, 6, 7, 14, 15), hi);
}

template <typename KV>
inline void row_bf16x64(const KV* row, const void* tables, __m512i& first, __m512i& second) {
  if constexpr (std::is_same_v<KV, at::BFloat16>) {
    first = _mm512_loadu_si512(row);
    second = _mm512_loadu_si512(row + 32);
  } else {
#ifdef CORRAL_FLOAT8_TABLES
    __m512i lo, hi;
    widen_chunk_bf16(row, *static_cast<const Float8Tables*>(tables), lo, hi);
    interleave_lanes(lo, hi, first, second);
#endif
  }
}

// The lookup tables row_bf16x64 needs for KV (unused for bfloat16).
template <typename KV>
inline auto float8_tables_for() {
#ifdef CORRAL_FLOAT8_TABLES
  if constexpr (is_float8_v<KV>) {
    return float8_tables<KV>();
  } else {
    return Float8Tables{};
  }
#else
  return 0;
#endif
}
#endif

// Packs keys [c0, c0 + n) as K^T in column blocks of 64 keys; keys past n are zero.
// A float8 cache is widened to bfloat16 on the way (exactly).
template <typename KV>
void pack_keys(const PagedView<KV>& view, int64_t c0, int64_t n, uint32_t* out) {
  const int64_t words = view.head_size / 2;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (kVectorRows<KV>) {
    if (view.head_size % 64 == 0) {
      // Each key's words scatter down a column of the block (stride 64 words).
      [[maybe_unused]] const auto tables = float8_tables_for<KV>();
      const __m512i column = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                  10, 11, 12, 13, 14, 15),
                                                _mm512_set1_epi32(kAmxColumns));
      for (int64_t j = 0; j < kAmxKeyChunk; ++j) {
        uint32_t* dst = out + (j / kAmxColumns) * words * kAmxColumns + j % kAmxColumns;
        const KV* src = j < n ? view.key_row(c0 + j) : nullptr;
        for (int64_t d = 0; d < view.head_size; d += 64) {
          __m512i first = _mm512_setzero_si512(), second = _mm512_setzero_si512();
          if (src != nullptr) {
            row_bf16x64(src + d, &tables, first, second);
          }
          uint32_t* col = dst + (d / 2) * kAmxColumns;
          _mm512_i32scatter_epi32(col, column, first, 4);
          _mm512_i32scatter_epi32(col + 16 * kAmxColumns, column, second, 4);
        }
      }
      return;
    }
  }
#endif
  for (int64_t j = 0; j < kAmxKeyChunk; ++j) {
    uint32_t* dst = out + (j / kAmxColumns) * words * kAmxColumns + j % kAmxColumns;
    if (j < n) {
      const KV* src = view.key_row(c0 + j);
      for (int64_t w = 0; w < words; ++w) {
        dst[w * kAmxColumns] = pair_word(src, w);
      }
    } else {
      for (int64_t w = 0; w < words; ++w) {
        dst[w * kAmxColumns] = 0;
      }
    }
  }
}

// Packs values [c0, c0 + n) as V in column blocks of up to 64 dims: each word holds
// the same dim of two consecutive keys. Keys past n are zero.
template <typename KV>
void pack_values(const PagedView<KV>& view, int64_t c0, int64_t n, uint32_t* out) {
  const int64_t hs = view.head_size;
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (kVectorRows<KV>) {
    if (hs % 64 == 0) {
      // Two rows' elements interleave in 16-bit pairs (within 128-bit lanes), and
      // two permutes of 64-bit pieces restore the order of the dims.
      [[maybe_unused]] const auto tables = float8_tables_for<KV>();
      for (int64_t j = 0; j < kAmxKeyChunk; j += 2) {
        const KV* a = j < n ? view.value_row(c0 + j) : nullptr;
        const KV* b = j + 1 < n ? view.value_row(c0 + j + 1) : nullptr;
        for (int64_t d0 = 0; d0 < hs; d0 += kAmxColumns) {
          __m512i a0 = _mm512_setzero_si512(), a1 = a0, b0 = a0, b1 = a0;
          if (a != nullptr) {
            row_bf16x64(a + d0, &tables, a0, a1);
          }
          if (b != nullptr) {
            row_bf16x64(b + d0, &tables, b0, b1);
          }
          uint32_t* dst = out + d0 * kAmxKeyChunk / 2 + (j / 2) * kAmxColumns;
          __m512i words[4];
          interleave_lanes(_mm512_unpacklo_epi16(a0, b0), _mm512_unpackhi_epi16(a0, b0), words[0],
                           words[1]);
          interleave_lanes(_mm512_unpacklo_epi16(a1, b1), _mm512_unpackhi_epi16(a1, b1), words[2],
                           words[3]);
          for (int w = 0; w < 4; ++w) {
            _mm512_storeu_si512(dst + 16 * w, words[w]);
          }
        }
      }
      return;
    }
  }
#endif
  for (int64_t j = 0; j < kAmxKeyChunk; j += 2) {
    const KV* a = j < n ? view.value_row(c0 + j) : nullptr;
    const KV* b = j + 1 < n ? view.value_row(c0 + j + 1) : nullptr;
    for (int64_t d0 = 0; d0 < hs; d0 += kAmxColumns) {
      const int64_t nb = std::min(kAmxColumns, hs - d0);
      uint32_t* dst = out + d0 * kAmxKeyChunk / 2 + (j / 2) * nb;
      for (int64_t d = 0; d < nb; ++d) {
        const uint32_t lo = a ? element_bits(a, d0 + d) : 0;
        const uint32_t hi = b ? element_bits(b, d0 + d) : 0;
        dst[d] = lo | (hi << 16);
      }
    }
  }
}

// One row of a chunk's scores: keys [lo, hi) of the chunk's kAmxKeyChunk are
// visible. Folds them (times `scale`) into the row's running max and sum, rescales
// its output row when the max grows, and writes the bfloat16 probabilities (zero
// outside [lo, hi)). Two passes over the scores: max, then exp, sum and store.
inline void softmax_chunk_row(const float* scores, int64_t lo, int64_t hi, float scale,
                              at::BFloat16* probs, float& max, float& sum, float* acc,
                              int64_t head_size) {
  constexpr int64_t C = kAmxKeyChunk;
#if !defined(CPU_CAPABILITY_AVX512)
  // (An AVX2 build on an AMX machine: the same steps in separate passes.)
  float row[C];
  std::copy_n(scores, C, row);
  std::fill(row, row + lo, 0.0f);
  std::fill(row + hi, row + C, 0.0f);
  scale_row(row, C, scale);
  const float new_max = std::max(max, max_of(row + lo, hi - lo));
  const float rescale = std::exp(max - new_max);
  sum = sum * rescale + exp_shift_sum(row + lo, hi - lo, new_max);
  max = new_max;
  store_row(probs, row, C, 1.0f);
#else
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo_v = _mm512_set1_epi32(static_cast<int>(lo));
  const __m512i hi_v = _mm512_set1_epi32(static_cast<int>(hi));
  const auto visible = [&](int64_t d) {
    const __m512i idx = _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(d)));
    return static_cast<__mmask16>(_mm512_cmpge_epi32_mask(idx, lo_v) &
                                  _mm512_cmplt_epi32_mask(idx, hi_v));
  };
  const __m512 sc = _mm512_set1_ps(scale);
  __m512 mv = _mm512_set1_ps(kNegInf);
  for (int64_t d = 0; d < C; d += 16) {
    const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(scores + d), sc);
    mv = _mm512_mask_max_ps(mv, visible(d), mv, v);
  }
  const float new_max = std::max(max, _mm512_reduce_max_ps(mv));
  const float rescale = std::exp(max - new_max);
  const fVec shift(new_max);
  __m512 total = _mm512_setzero_ps();
  for (int64_t d = 0; d < C; d += 16) {
    const fVec v(_mm512_mul_ps(_mm512_loadu_ps(scores + d), sc));
    const __m512 e = _mm512_maskz_mov_ps(visible(d), (v - shift).exp_u20());
    total = _mm512_add_ps(total, e);
    store_f32(probs + d, fVec(e));
  }
  sum = sum * rescale + _mm512_reduce_add_ps(total);
  max = new_max;
#endif
  if (rescale != 1.0f) {
    scale_row(acc, head_size, rescale);
  }
}

// Causal attention of the raw bfloat16 query rows in scratch.q (row r = token
// r / group, head r % group) for `num_tokens` consecutive tokens whose first sits
// at `first_pos`; `scale` multiplies the scores. Keys at p - window < j <= p are
// visible to a token at p (window <= 0: all j <= p). Fills scratch.acc / max / sum.
template <typename KV>
void prefill_attend_amx(const PagedView<KV>& view, int64_t group, int64_t num_tokens,
                        int64_t first_pos, int64_t window, float scale, AmxPrefillScratch& s) {
  namespace blas = at::native::cpublas;
  const int64_t hs = view.head_size;
  const int64_t rows = num_tokens * group;
  constexpr int64_t C = kAmxKeyChunk;
  const auto* q = s.q.data();
  const auto* keys = reinterpret_cast<const at::BFloat16*>(s.keys.data());
  const auto* values = reinterpret_cast<const at::BFloat16*>(s.values.data());
  for (int64_t r = 0; r < rows; ++r) {
    s.max[r] = kNegInf;
    s.sum[r] = 0.0f;
  }
  std::fill(s.acc.begin(), s.acc.begin() + rows * hs, 0.0f);
  const int64_t key_end = first_pos + num_tokens;
  const int64_t key_begin = window > 0 ? std::max<int64_t>(0, first_pos - window + 1) : 0;
  for (int64_t c0 = key_begin; c0 < key_end; c0 += C) {
    const int64_t n = std::min(C, key_end - c0);
    // scores[rows, C] = Q[rows, hs] K^T[hs, C], one block of 64 keys at a time.
    pack_keys(view, c0, n, s.keys.data());
    for (int64_t b = 0; b < C; b += kAmxColumns) {
      blas::brgemm(rows, kAmxColumns, hs, hs, kAmxColumns, C, false, q, keys + b * hs,
                   s.scores.data() + b);
    }
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = first_pos + r / group;
      const int64_t hi = std::clamp<int64_t>(pos + 1 - c0, 0, n);
      const int64_t lo =
          window > 0 ? std::clamp<int64_t>(pos - window + 1 - c0, 0, hi) : int64_t{0};
      at::BFloat16* p = s.probs.data() + r * C;
      if (lo == hi) {
        std::fill(p, p + C, at::BFloat16(0.0f));
        continue;
      }
      // The zero keys past n are masked too (hi <= n).
      softmax_chunk_row(s.scores.data() + r * C, lo, hi, scale, p, s.max[r], s.sum[r],
                        s.acc.data() + r * hs, hs);
    }
    // acc[rows, hs] += P[rows, C] V[C, hs], one block of up to 64 dims at a time.
    pack_values(view, c0, n, s.values.data());
    for (int64_t d0 = 0; d0 < hs; d0 += kAmxColumns) {
      const int64_t nb = std::min(kAmxColumns, hs - d0);
      blas::brgemm(rows, nb, C, C, nb, hs, true, s.probs.data(), values + d0 * C,
                   s.acc.data() + d0);
    }
  }
}

}  // namespace corral::cpu
