// Register-blocked row kernels of decode attention: the dot products of one key
// row with the query rows of a GQA group, and the weighted add of one value row
// into their outputs. Each key or value row is read (and converted) once for
// the whole group.
#pragma once

#include "vec_math.h"

#include <cstdint>
#include <type_traits>

#include <immintrin.h>

namespace corral::cpu {

// Runs `kernel(group size, first row)` over `rows` rows in groups of up to four,
// so that every group size compiles to fully unrolled register code.
template <typename Kernel>
inline void for_row_groups(int64_t rows, Kernel&& kernel) {
  int64_t g = 0;
  for (; g + 4 <= rows; g += 4) {
    kernel(std::integral_constant<int, 4>{}, g);
  }
  switch (rows - g) {
    case 3:
      kernel(std::integral_constant<int, 3>{}, g);
      break;
    case 2:
      kernel(std::integral_constant<int, 2>{}, g);
      break;
    case 1:
      kernel(std::integral_constant<int, 1>{}, g);
      break;
    default:
      break;
  }
}

// scores[g] = dot(q[g], k) for NG rows at once, so k is read once per group.
template <int NG, typename T>
inline void dot_rows(const float* q, int64_t head_size, const T* k, float* scores,
                     int64_t score_stride) {
  fVec sums[NG];
  for (int g = 0; g < NG; ++g) {
    sums[g] = fVec(0.0f);
  }
  for (int64_t d = 0; d < head_size; d += kVec) {
    const fVec kv = load_f32(k + d);
    for (int g = 0; g < NG; ++g) {
      sums[g] = fmadd(fVec::loadu(q + g * head_size + d), kv, sums[g]);
    }
  }
  for (int g = 0; g < NG; ++g) {
    scores[g * score_stride] = sums[g].reduce_add();
  }
}

// acc[g] += p[g * p_stride] * v for NG rows at once, so v is read (and converted)
// once per group.
template <int NG, typename T>
inline void axpy_rows(float* acc, int64_t head_size, const float* p, int64_t p_stride,
                      const T* v) {
  fVec weights[NG];
  for (int g = 0; g < NG; ++g) {
    weights[g] = fVec(p[g * p_stride]);
  }
  for (int64_t d = 0; d < head_size; d += kVec) {
    const fVec vv = load_f32(v + d);
    for (int g = 0; g < NG; ++g) {
      float* a = acc + g * head_size + d;
      fmadd(weights[g], vv, fVec::loadu(a)).store(a);
    }
  }
}

// scores[g * score_stride] = dot(q[g], k) for `rows` query rows.
template <typename T>
inline void dot_group(const float* q, int64_t rows, int64_t head_size, const T* k,
                      float* scores, int64_t score_stride) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    dot_rows<decltype(ng)::value>(q + g * head_size, head_size, k, scores + g * score_stride,
                                  score_stride);
  });
}

// acc[g] += p[g * p_stride] * v for `rows` rows.
template <typename T>
inline void axpy_group(float* acc, int64_t rows, int64_t head_size, const float* p,
                       int64_t p_stride, const T* v) {
  for_row_groups(rows, [&](auto ng, int64_t g) {
    axpy_rows<decltype(ng)::value>(acc + g * head_size, head_size, p + g * p_stride, p_stride,
                                   v);
  });
}

// Four key (or value) rows handled together: a block of consecutive positions.
constexpr int kKeyBlock = 4;

// Runs `kernel(group size, first row)` over `rows` rows in groups of up to two:
// the four-key kernels hold 4 x group accumulators, and two rows are what fits in
// the sixteen AVX2 registers beside the four key vectors.
template <typename Kernel>
inline void for_row_pairs(int64_t rows, Kernel&& kernel) {
  int64_t g = 0;
  for (; g + 2 <= rows; g += 2) {
    kernel(std::integral_constant<int, 2>{}, g);
  }
  if (g < rows) {
    kernel(std::integral_constant<int, 1>{}, g);
  }
}

// out[0:4] = the horizontal sums of a, b, c, d. With AVX2 the four reductions
// share three hadds (one reduction alone costs about as many shuffles); that
// reduction, not the multiply-adds, was the larger part of a 64-wide dot product.
#if defined(CPU_CAPABILITY_AVX2) || defined(CPU_CAPABILITY_AVX512)
inline void reduce_add4_256(__m256 a, __m256 b, __m256 c, __m256 d, float* out) {
  const __m256 ab = _mm256_hadd_ps(a, b);
  const __m256 cd = _mm256_hadd_ps(c, d);
  const __m256 abcd = _mm256_hadd_ps(ab, cd);
  _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(abcd), _mm256_extractf128_ps(abcd, 1)));
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// The two 256-bit halves of v added: the first step of its reduction.
inline __m256 fold_halves(__m512 v) {
  return _mm256_add_ps(_mm512_castps512_ps256(v),
                       _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)));
}

// With AVX-512 the four sums fold to 256 bits first, then share the AVX2 hadds:
// 13 instructions instead of four separate reductions of about 8 each.
inline void reduce_add4(__m512 a, __m512 b, __m512 c, __m512 d, float* out) {
  reduce_add4_256(fold_halves(a), fold_halves(b), fold_halves(c), fold_halves(d), out);
}
#endif

inline void reduce_add4(const fVec& a, const fVec& b, const fVec& c, const fVec& d,
                        float* out) {
#if defined(CPU_CAPABILITY_AVX512)
  reduce_add4(static_cast<__m512>(a), static_cast<__m512>(b), static_cast<__m512>(c),
              static_cast<__m512>(d), out);
#elif defined(CPU_CAPABILITY_AVX2)
  reduce_add4_256(a, b, c, d, out);
#else
  out[0] = a.reduce_add();
  out[1] = b.reduce_add();
  out[2] = c.reduce_add();
  out[3] = d.reduce_add();
#endif
}

// scores[g * score_stride + i] = dot(q[g], k[i]) for NG rows and four keys.
template <int NG, typename T>
inline void dot_rows_x4(const float* q, int64_t head_size, const T* const* k, float* scores,
                        int64_t score_stride) {
  fVec sums[kKeyBlock][NG];
  for (int i = 0; i < kKeyBlock; ++i) {
    for (int g = 0; g < NG; ++g) {
      sums[i][g] = fVec(0.0f);
    }
  }
  for (int64_t d = 0; d < head_size; d += kVec) {
    fVec kv[kKeyBlock];
    for (int i = 0; i < kKeyBlock; ++i) {
      kv[i] = load_f32(k[i] + d);
    }
    for (int g = 0; g < NG; ++g) {
      const fVec qv = fVec::loadu(q + g * head_size + d);
      for (int i = 0; i < kKeyBlock; ++i) {
        sums[i][g] = fmadd(qv, kv[i], sums[i][g]);
      }
    }
  }
  for (int g = 0; g < NG; ++g) {
    reduce_add4(sums[0][g], sums[1][g], sums[2][g], sums[3][g], scores + g * score_stride);
  }
}

// acc[g] += sum_i p[g * p_stride + i] * v[i] for NG rows and four value rows: each
// output vector is loaded and stored once per four values instead of once per value.
template <int NG, typename T>
inline void axpy_rows_x4(float* acc, int64_t head_size, const float* p, int64_t p_stride,
                         const T* const* v) {
  fVec weights[kKeyBlock][NG];
  for (int i = 0; i < kKeyBlock; ++i) {
    for (int g = 0; g < NG; ++g) {
      weights[i][g] = fVec(p[g * p_stride + i]);
    }
  }
  for (int64_t d = 0; d < head_size; d += kVec) {
    fVec vv[kKeyBlock];
    for (int i = 0; i < kKeyBlock; ++i) {
      vv[i] = load_f32(v[i] + d);
    }
    for (int g = 0; g < NG; ++g) {
      float* a = acc + g * head_size + d;
      fVec sum = fVec::loadu(a);
      for (int i = 0; i < kKeyBlock; ++i) {
        sum = fmadd(weights[i][g], vv[i], sum);
      }
      sum.store(a);
    }
  }
}

// acc[g] += sum_i p[g * p_stride + i] * v[i] for `rows` rows and four value rows.
template <typename T>
inline void axpy_group_x4(float* acc, int64_t rows, int64_t head_size, const float* p,
                          int64_t p_stride, const T* const* v) {
  for_row_pairs(rows, [&](auto ng, int64_t g) {
    axpy_rows_x4<decltype(ng)::value>(acc + g * head_size, head_size, p + g * p_stride,
                                      p_stride, v);
  });
}

// The query rows of a decode task, in the two forms the score kernels use.
template <typename T>
struct QueryRows {
  const float* scaled;  // [rows, head_size] float32, already multiplied by `scale`
  const T* raw;         // [rows, head_size] as stored in `query`
  float scale;
};

// scores[g * score_stride] = scale * dot(q[first_row + g], k) for `rows` rows; the
// keys may be stored in another dtype than the query (a float8 cache).
template <typename T, typename KV>
inline void score_group(const QueryRows<T>& q, int64_t first_row, int64_t rows,
                        int64_t head_size, const KV* k, float* scores, int64_t score_stride) {
  dot_group(q.scaled + first_row * head_size, rows, head_size, k, scores, score_stride);
}

// scores[g * score_stride + i] = scale * dot(q[first_row + g], k[i]) for `rows`
// rows and four keys.
template <typename T, typename KV>
inline void score_group_x4(const QueryRows<T>& q, int64_t first_row, int64_t rows,
                           int64_t head_size, const KV* const* k, float* scores,
                           int64_t score_stride) {
  const float* qs = q.scaled + first_row * head_size;
  for_row_pairs(rows, [&](auto ng, int64_t g) {
    dot_rows_x4<decltype(ng)::value>(qs + g * head_size, head_size, k, scores + g * score_stride,
                                     score_stride);
  });
}

#ifdef CORRAL_AVX512_BF16
// bfloat16 with AVX512-BF16: vdpbf16ps multiplies raw bfloat16 pairs exactly into
// float32 sums, so keys need no conversion and half as many instructions. The
// raw (unscaled) query is used so that no extra rounding enters the scores.
template <int NG>
inline void dot_rows_bf16(const at::BFloat16* q, int64_t head_size, const at::BFloat16* k,
                          float scale, float* scores, int64_t score_stride) {
  __m512 sums[NG];
  for (int g = 0; g < NG; ++g) {
    sums[g] = _mm512_setzero_ps();
  }
  int64_t d = 0;
  for (; d + 32 <= head_size; d += 32) {
    const auto kv = (__m512bh)_mm512_loadu_si512(k + d);
    for (int g = 0; g < NG; ++g) {
      sums[g] = _mm512_dpbf16_ps(sums[g], (__m512bh)_mm512_loadu_si512(q + g * head_size + d),
                                 kv);
    }
  }
  if (d < head_size) {
    // head_size is a multiple of 16: one half vector remains.
    const auto kv = (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, k + d);
    for (int g = 0; g < NG; ++g) {
      const auto qv = (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, q + g * head_size + d);
      sums[g] = _mm512_dpbf16_ps(sums[g], qv, kv);
    }
  }
  for (int g = 0; g < NG; ++g) {
    scores[g * score_stride] = _mm512_reduce_add_ps(sums[g]) * scale;
  }
}

// (Overloads, not specializations: they take over when query and keys are both
// bfloat16.)
inline void score_group(const QueryRows<at::BFloat16>& q, int64_t first_row, int64_t rows,
                        int64_t head_size, const at::BFloat16* k, float* scores,
                        int64_t score_stride) {
  const at::BFloat16* raw = q.raw + first_row * head_size;
  for_row_groups(rows, [&](auto ng, int64_t g) {
    dot_rows_bf16<decltype(ng)::value>(raw + g * head_size, head_size, k, q.scale,
                                       scores + g * score_stride, score_stride);
  });
}

// Four keys against NG rows with vdpbf16ps: 4 x NG sums, reduced four at a time.
template <int NG>
inline void dot_rows_bf16_x4(const at::BFloat16* q, int64_t head_size,
                             const at::BFloat16* const* k, float scale, float* scores,
                             int64_t score_stride) {
  __m512 sums[kKeyBlock][NG];
  for (int i = 0; i < kKeyBlock; ++i) {
    for (int g = 0; g < NG; ++g) {
      sums[i][g] = _mm512_setzero_ps();
    }
  }
  int64_t d = 0;
  for (; d + 32 <= head_size; d += 32) {
    __m512bh kv[kKeyBlock];
    for (int i = 0; i < kKeyBlock; ++i) {
      kv[i] = (__m512bh)_mm512_loadu_si512(k[i] + d);
    }
    for (int g = 0; g < NG; ++g) {
      const auto qv = (__m512bh)_mm512_loadu_si512(q + g * head_size + d);
      for (int i = 0; i < kKeyBlock; ++i) {
        sums[i][g] = _mm512_dpbf16_ps(sums[i][g], qv, kv[i]);
      }
    }
  }
  if (d < head_size) {
    // head_size is a multiple of 16: one half vector remains.
    __m512bh kv[kKeyBlock];
    for (int i = 0; i < kKeyBlock; ++i) {
      kv[i] = (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, k[i] + d);
    }
    for (int g = 0; g < NG; ++g) {
      const auto qv = (__m512bh)_mm512_maskz_loadu_epi16(0xFFFF, q + g * head_size + d);
      for (int i = 0; i < kKeyBlock; ++i) {
        sums[i][g] = _mm512_dpbf16_ps(sums[i][g], qv, kv[i]);
      }
    }
  }
  for (int g = 0; g < NG; ++g) {
    float four[kKeyBlock];
    reduce_add4(sums[0][g], sums[1][g], sums[2][g], sums[3][g], four);
    for (int i = 0; i < kKeyBlock; ++i) {
      scores[g * score_stride + i] = four[i] * scale;
    }
  }
}

inline void score_group_x4(const QueryRows<at::BFloat16>& q, int64_t first_row, int64_t rows,
                           int64_t head_size, const at::BFloat16* const* k, float* scores,
                           int64_t score_stride) {
  const at::BFloat16* raw = q.raw + first_row * head_size;
  for_row_pairs(rows, [&](auto ng, int64_t g) {
    dot_rows_bf16_x4<decltype(ng)::value>(raw + g * head_size, head_size, k, q.scale,
                                          scores + g * score_stride, score_stride);
  });
}
#endif

}  // namespace corral::cpu
