// Decode row kernels over float8 caches, widened by table lookup.
//
// A float8 byte has 128 magnitudes and a sign. Two byte permutes (vpermi2b, AVX-512
// VBMI) look up the high and the low byte of each magnitude's bfloat16 pattern for
// 64 bytes at once; the sign is or-ed into the high byte, and interleaving the two
// bytes, then each 16-bit pattern with 16 zero bits, gives 64 exact float32 values
// in nine instructions (the float16 route costs eight per 16). Every float8 value
// is a normal bfloat16, subnormals included, so the tables are exact for both
// float8 types.
//
// The unpacks work within 128-bit lanes, so a 64-element chunk comes out as four
// vectors whose lanes are a fixed shuffle of the chunk ("chunk order", below).
// The kernels keep the scaled query rows and the output accumulators of a task in
// that order; to_chunk_order and from_chunk_order convert at the task's ends. A
// head size that is not a multiple of 64 keeps its last (head_size % 64) elements
// in natural order, handled by the float16-route kernels of row_kernels.h.
#pragma once

#include "row_kernels.h"
#include "vec_math.h"

#include <array>
#include <cstdint>
#include <cstring>

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#define CORRAL_FLOAT8_TABLES 1
#endif

namespace corral::cpu {

#ifdef CORRAL_FLOAT8_TABLES
constexpr bool kFloat8Tables = true;
#else
constexpr bool kFloat8Tables = false;
#endif

// Elements widened per lookup.
constexpr int64_t kFloat8Chunk = 64;

// Chunk order. The lookups give the chunk's bfloat16 patterns as two vectors of
// 32 words, `lo` and `hi`, whose 128-bit lane L holds elements 16 L + 0..7 and
// 16 L + 8..15. Each word shifted into the top of its dword (even words) or masked
// in place (odd words) is a float32, giving four vectors k = 2 h + e (h: lo or hi,
// e: even or odd word) whose lane L, dword d holds element 16 L + 8 h + 2 d + e.
// That element is stored at 16 k + 4 L + d of the chunk.
inline int64_t chunk_slot(int64_t n) {
  const int64_t lane = n / 16, h = (n % 16) / 8, d = (n % 8) / 2, e = n % 2;
  return 16 * (2 * h + e) + 4 * lane + d;
}

// Moves the full chunks of rows x head_size floats, in place, from natural order
// to chunk order (to_chunk = true) or back.
inline void reorder_chunks(float* rows_data, int64_t rows, int64_t head_size, bool to_chunk) {
  const int64_t full = head_size - head_size % kFloat8Chunk;
  float tmp[kFloat8Chunk];
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < full; c += kFloat8Chunk) {
      float* chunk = rows_data + r * head_size + c;
      for (int64_t n = 0; n < kFloat8Chunk; ++n) {
        if (to_chunk) {
          tmp[chunk_slot(n)] = chunk[n];
        } else {
          tmp[n] = chunk[chunk_slot(n)];
        }
      }
      std::memcpy(chunk, tmp, sizeof(tmp));
    }
  }
}

inline void to_chunk_order(float* rows_data, int64_t rows, int64_t head_size) {
  reorder_chunks(rows_data, rows, head_size, true);
}

inline void from_chunk_order(float* rows_data, int64_t rows, int64_t head_size) {
  reorder_chunks(rows_data, rows, head_size, false);
}

#ifdef CORRAL_FLOAT8_TABLES

// The bfloat16 patterns of a float8 type's 128 magnitudes: high bytes in hi0 (0..63)
// and hi1 (64..127), low bytes in lo0 and lo1.
struct Float8Tables {
  __m512i hi0, hi1, lo0, lo1;
};

template <typename KV>
inline const std::array<uint8_t, 256>& float8_table_bytes() {
  static const std::array<uint8_t, 256> bytes = [] {
    std::array<uint8_t, 256> out{};
    for (int m = 0; m < 128; ++m) {
      const float value = static_cast<float>(KV(static_cast<uint8_t>(m), KV::from_bits()));
      // Exact: every float8 value is a bfloat16.
      const uint16_t bits = c10::BFloat16(value).x;
      out[m] = static_cast<uint8_t>(bits >> 8);
      out[128 + m] = static_cast<uint8_t>(bits & 0xFF);
    }
    return out;
  }();
  return bytes;
}

template <typename KV>
inline Float8Tables float8_tables() {
  const uint8_t* b = float8_table_bytes<KV>().data();
  return {_mm512_loadu_si512(b), _mm512_loadu_si512(b + 64), _mm512_loadu_si512(b + 128),
          _mm512_loadu_si512(b + 192)};
}

// The bfloat16 patterns of the 64 float8 values at p: `lo` holds elements
// 16 L + 0..7 in lane L, `hi` elements 16 L + 8..15.
template <typename KV>
inline void widen_chunk_bf16(const KV* p, const Float8Tables& t, __m512i& lo, __m512i& hi) {
  const __m512i b = _mm512_loadu_si512(p);
  // The permutes read bits 0..6 of each byte: the magnitude.
  __m512i high = _mm512_permutex2var_epi8(t.hi0, b, t.hi1);
  const __m512i low = _mm512_permutex2var_epi8(t.lo0, b, t.lo1);
  // high | (b & 0x80): the sign bit.
  high = _mm512_ternarylogic_epi32(high, b, _mm512_set1_epi8(static_cast<char>(0x80)), 0xF8);
  lo = _mm512_unpacklo_epi8(low, high);
  hi = _mm512_unpackhi_epi8(low, high);
}

// The 64 float8 values at p as four float32 vectors in chunk order.
template <typename KV>
inline void widen_chunk(const KV* p, const Float8Tables& t, __m512 out[4]) {
  __m512i lo, hi;
  widen_chunk_bf16(p, t, lo, hi);
  const __m512i odd = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(lo, 16));
  out[1] = _mm512_castsi512_ps(_mm512_and_si512(lo, odd));
  out[2] = _mm512_castsi512_ps(_mm512_slli_epi32(hi, 16));
  out[3] = _mm512_castsi512_ps(_mm512_and_si512(hi, odd));
}

// scores[g * score_stride + i] = dot(q[g], k[i]) for NG query rows (chunk order)
// and kKeyBlock keys; each key chunk is widened once for all rows.
template <int NG, typename KV>
inline void dot_rows_float8_x4(const float* q, int64_t head_size, const KV* const* k,
                               const Float8Tables& t, float* scores, int64_t score_stride) {
  __m512 sums[kKeyBlock][NG];
  for (int i = 0; i < kKeyBlock; ++i) {
    for (int g = 0; g < NG; ++g) {
      sums[i][g] = _mm512_setzero_ps();
    }
  }
  const int64_t full = head_size - head_size % kFloat8Chunk;
  for (int64_t d = 0; d < full; d += kFloat8Chunk) {
    for (int i = 0; i < kKeyBlock; ++i) {
      __m512 kv[4];
      widen_chunk(k[i] + d, t, kv);
      for (int g = 0; g < NG; ++g) {
        const float* qg = q + g * head_size + d;
        for (int c = 0; c < 4; ++c) {
          sums[i][g] = _mm512_fmadd_ps(_mm512_loadu_ps(qg + 16 * c), kv[c], sums[i][g]);
        }
      }
    }
  }
  for (int64_t d = full; d < head_size; d += kVec) {
    for (int i = 0; i < kKeyBlock; ++i) {
      const __m512 kv = load_f32(k[i] + d);
      for (int g = 0; g < NG; ++g) {
        sums[i][g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * head_size + d), kv, sums[i][g]);
      }
    }
  }
  for (int g = 0; g < NG; ++g) {
    reduce_add4(sums[0][g], sums[1][g], sums[2][g], sums[3][g], scores + g * score_stride);
  }
}

// acc[g] += sum_i p[g * p_stride + i] * v[i] for NG rows (chunk order) and kKeyBlock
// value rows; each value chunk is widened once for all rows.
template <int NG, typename KV>
inline void axpy_rows_float8_x4(float* acc, int64_t head_size, const float* p,
                                int64_t p_stride, const KV* const* v, const Float8Tables& t) {
  const int64_t full = head_size - head_size % kFloat8Chunk;
  for (int64_t d = 0; d < full; d += kFloat8Chunk) {
    __m512 vv[kKeyBlock][4];
    for (int i = 0; i < kKeyBlock; ++i) {
      widen_chunk(v[i] + d, t, vv[i]);
    }
    for (int g = 0; g < NG; ++g) {
      float* a = acc + g * head_size + d;
      for (int c = 0; c < 4; ++c) {
        __m512 sum = _mm512_loadu_ps(a + 16 * c);
        for (int i = 0; i < kKeyBlock; ++i) {
          sum = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + i]), vv[i][c], sum);
        }
        _mm512_storeu_ps(a + 16 * c, sum);
      }
    }
  }
  for (int64_t d = full; d < head_size; d += kVec) {
    __m512 vv[kKeyBlock];
    for (int i = 0; i < kKeyBlock; ++i) {
      vv[i] = load_f32(v[i] + d);
    }
    for (int g = 0; g < NG; ++g) {
      float* a = acc + g * head_size + d;
      __m512 sum = _mm512_loadu_ps(a);
      for (int i = 0; i < kKeyBlock; ++i) {
        sum = _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride + i]), vv[i], sum);
      }
      _mm512_storeu_ps(a, sum);
    }
  }
}

// The same for one key or value row (the positions after the last block of four).
template <int NG, typename KV>
inline void dot_rows_float8(const float* q, int64_t head_size, const KV* k,
                            const Float8Tables& t, float* scores, int64_t score_stride) {
  __m512 sums[NG];
  for (int g = 0; g < NG; ++g) {
    sums[g] = _mm512_setzero_ps();
  }
  const int64_t full = head_size - head_size % kFloat8Chunk;
  for (int64_t d = 0; d < full; d += kFloat8Chunk) {
    __m512 kv[4];
    widen_chunk(k + d, t, kv);
    for (int g = 0; g < NG; ++g) {
      for (int c = 0; c < 4; ++c) {
        sums[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * head_size + d + 16 * c), kv[c],
                                  sums[g]);
      }
    }
  }
  for (int64_t d = full; d < head_size; d += kVec) {
    const __m512 kv = load_f32(k + d);
    for (int g = 0; g < NG; ++g) {
      sums[g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * head_size + d), kv, sums[g]);
    }
  }
  for (int g = 0; g < NG; ++g) {
    scores[g * score_stride] = _mm512_reduce_add_ps(sums[g]);
  }
}

template <int NG, typename KV>
inline void axpy_rows_float8(float* acc, int64_t head_size, const float* p, int64_t p_stride,
                             const KV* v, const Float8Tables& t) {
  const int64_t full = head_size - head_size % kFloat8Chunk;
  for (int64_t d = 0; d < full; d += kFloat8Chunk) {
    __m512 vv[4];
    widen_chunk(v + d, t, vv);
    for (int g = 0; g < NG; ++g) {
      const __m512 w = _mm512_set1_ps(p[g * p_stride]);
      float* a = acc + g * head_size + d;
      for (int c = 0; c < 4; ++c) {
        _mm512_storeu_ps(a + 16 * c, _mm512_fmadd_ps(w, vv[c], _mm512_loadu_ps(a + 16 * c)));
      }
    }
  }
  for (int64_t d = full; d < head_size; d += kVec) {
    const __m512 vv = load_f32(v + d);
    for (int g = 0; g < NG; ++g) {
      float* a = acc + g * head_size + d;
      _mm512_storeu_ps(a, _mm512_fmadd_ps(_mm512_set1_ps(p[g * p_stride]), vv,
                                          _mm512_loadu_ps(a)));
    }
  }
}

// Group wrappers: rows go in fours (AVX-512 has registers for 4 x 4 sums), so each
// chunk is widened once per four rows.
template <typename KV>
inline void score_group_float8_x4(const float* q, int64_t rows, int64_t head_size,
                                  const KV* const* k, const Float8Tables& t, float* scores,
                                  int64_t score_stride) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    dot_rows_float8_x4<decltype(ng)::value>(q + g * head_size, head_size, k, t,
                                            scores + g * score_stride, score_stride);
  });
}

template <typename KV>
inline void axpy_group_float8_x4(float* acc, int64_t rows, int64_t head_size, const float* p,
                                 int64_t p_stride, const KV* const* v, const Float8Tables& t) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    axpy_rows_float8_x4<decltype(ng)::value>(acc + g * head_size, head_size, p + g * p_stride,
                                             p_stride, v, t);
  });
}

template <typename KV>
inline void score_group_float8(const float* q, int64_t rows, int64_t head_size, const KV* k,
                               const Float8Tables& t, float* scores, int64_t score_stride) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    dot_rows_float8<decltype(ng)::value>(q + g * head_size, head_size, k, t,
                                         scores + g * score_stride, score_stride);
  });
}

template <typename KV>
inline void axpy_group_float8(float* acc, int64_t rows, int64_t head_size, const float* p,
                              int64_t p_stride, const KV* v, const Float8Tables& t) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    axpy_rows_float8<decltype(ng)::value>(acc + g * head_size, head_size, p + g * p_stride,
                                          p_stride, v, t);
  });
}

#endif  // CORRAL_FLOAT8_TABLES

}  // namespace corral::cpu
