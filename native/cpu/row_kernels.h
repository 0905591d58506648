// Register-blocked row kernels of decode attention: the dot products of one key
// row with the query rows of a GQA group, and the weighted add of one value row
// into their outputs. Each key or value row is read (and converted) once for
// the whole group.
#pragma once

#include "vec_math.h"

#include <cstdint>
#include <type_traits>

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
#include <immintrin.h>
#define CORRAL_AVX512_BF16 1
#endif

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

// The query rows of a decode task, in the two forms the score kernels use.
template <typename T>
struct QueryRows {
  const float* scaled;  // [rows, head_size] float32, already multiplied by `scale`
  const T* raw;         // [rows, head_size] as stored in `query`
  float scale;
};

// scores[g * score_stride] = scale * dot(q[first_row + g], k) for `rows` rows.
template <typename T>
inline void score_group(const QueryRows<T>& q, int64_t first_row, int64_t rows,
                        int64_t head_size, const T* k, float* scores, int64_t score_stride) {
  dot_group(q.scaled + first_row * head_size, rows, head_size, k, scores, score_stride);
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

template <>
inline void score_group<at::BFloat16>(const QueryRows<at::BFloat16>& q, int64_t first_row,
                                      int64_t rows, int64_t head_size, const at::BFloat16* k,
                                      float* scores, int64_t score_stride) {
  const at::BFloat16* raw = q.raw + first_row * head_size;
  for_row_groups(rows, [&](auto ng, int64_t g) {
    dot_rows_bf16<decltype(ng)::value>(raw + g * head_size, head_size, k, q.scale,
                                       scores + g * score_stride, score_stride);
  });
}
#endif

}  // namespace corral::cpu
