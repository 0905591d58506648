// Vector helpers shared by the CPU attention kernels: float32 loads and stores
// of float / bfloat16 / float16 rows, and the small softmax primitives. All math
// runs in float32 whatever the storage dtype.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>

#include <immintrin.h>

namespace corral::cpu {

using fVec = at::vec::Vectorized<float>;
constexpr int64_t kVec = fVec::size();
// Head sizes are multiples of this, so no loop over a head dimension needs a tail.
constexpr int64_t kHeadSizeMultiple = 16;
static_assert(kHeadSizeMultiple % fVec::size() == 0, "head size multiple must fill vectors");
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

template <typename T>
inline fVec load_f32(const T* p) {
  fVec out;
  at::vec::load_to_float<T>(p, out);
  return out;
}

template <>
inline fVec load_f32<float>(const float* p) {
  return fVec::loadu(p);
}

// Calls fn(T{}) for the storage type of a float32 / bfloat16 / float16 tensor
// (checked by the caller).
template <typename Fn>
void dispatch_float_types(at::ScalarType dtype, const char* op, Fn&& fn) {
  switch (dtype) {
    case at::kFloat:
      return fn(float{});
    case at::kBFloat16:
      return fn(at::BFloat16{});
    case at::kHalf:
      return fn(at::Half{});
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", dtype);
  }
}

// Rounds float32 lanes to T and back: the value a T tensor would hold.
template <typename T>
inline fVec round_to(const fVec& v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return std::get<0>(at::vec::convert_to_float<T>(at::vec::convert_from_float<T>(v, v)));
  }
}

template <typename T>
inline float round_to(float x) {
  return static_cast<float>(static_cast<T>(x));
}

// kVec elements widened one by one (CPUs without AVX2).
template <typename T>
inline fVec load_f32_scalar(const T* p) {
  float tmp[kVec];
  for (int64_t i = 0; i < kVec; ++i) {
    tmp[i] = static_cast<float>(p[i]);
  }
  return fVec::loadu(tmp);
}

// float8 KV caches (kv_cache_dtype "fp8_e5m2" / "fp8"). An e5m2 byte is the top
// byte of a float16; an e4m3 byte with its sign moved to bit 15 and the rest to
// bits 7..13 is a float16 whose exponent bias is 8 too large, i.e. 2^-8 times the
// value (subnormals included). Both widen through the CPU's float16 conversion.
// The caches never hold e4m3's NaN pattern: writes saturate (to_cache below).
template <>
inline fVec load_f32<c10::Float8_e5m2>(const c10::Float8_e5m2* p) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return fVec(_mm512_cvtph_ps(_mm256_slli_epi16(_mm256_cvtepu8_epi16(bytes), 8)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return fVec(_mm256_cvtph_ps(_mm_slli_epi16(_mm_cvtepu8_epi16(bytes), 8)));
#else
  return load_f32_scalar(p);
#endif
}

template <>
inline fVec load_f32<c10::Float8_e4m3fn>(const c10::Float8_e4m3fn* p) {
#if defined(CPU_CAPABILITY_AVX512)
  const __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  const __m256i half = _mm256_or_si256(_mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8),
                                       _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7F)), 7));
  return fVec(_mm512_mul_ps(_mm512_cvtph_ps(half), _mm512_set1_ps(256.0f)));
#elif defined(CPU_CAPABILITY_AVX2)
  const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
  const __m128i half = _mm_or_si128(_mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8),
                                    _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7F)), 7));
  return fVec(_mm256_mul_ps(_mm256_cvtph_ps(half), _mm256_set1_ps(256.0f)));
#else
  return load_f32_scalar(p);
#endif
}

template <typename T>
inline constexpr bool is_float8_v =
    std::is_same_v<T, c10::Float8_e4m3fn> || std::is_same_v<T, c10::Float8_e5m2>;

// x rounded (to nearest even) into a float8 cache, saturated to its finite range
// (torch's own conversion turns an overflow into NaN or infinity).
template <typename KV>
inline KV to_cache(float x) {
  static_assert(is_float8_v<KV>, "to_cache converts to float8 caches");
  constexpr float top = std::is_same_v<KV, c10::Float8_e4m3fn> ? 448.0f : 57344.0f;
  return KV(std::clamp(x, -top, top));
}

template <typename T>
inline void store_f32(T* p, const fVec& v) {
  const auto packed = at::vec::convert_from_float<T>(v, v);
  packed.store(p, kVec);
}

template <>
inline void store_f32<float>(float* p, const fVec& v) {
  v.store(p);
}

// dst[0:n] = float(src[0:n]) * scale; n is a multiple of kVec.
template <typename T>
inline void convert_row(float* dst, const T* src, int64_t n, float scale) {
  const fVec s(scale);
  for (int64_t d = 0; d < n; d += kVec) {
    (load_f32(src + d) * s).store(dst + d);
  }
}

// dst[0:n] = T(src[0:n] * scale).
template <typename T>
inline void store_row(T* dst, const float* src, int64_t n, float scale) {
  const fVec s(scale);
  for (int64_t d = 0; d < n; d += kVec) {
    store_f32(dst + d, fVec::loadu(src + d) * s);
  }
}

// row[0:n] *= scale.
inline void scale_row(float* row, int64_t n, float scale) {
  const fVec s(scale);
  for (int64_t d = 0; d < n; d += kVec) {
    (fVec::loadu(row + d) * s).store(row + d);
  }
}

// acc[0:n] += p * float(v[0:n]).
template <typename T>
inline void axpy_row(float* acc, float p, const T* v, int64_t n) {
  const fVec pv(p);
  for (int64_t d = 0; d < n; d += kVec) {
    fmadd(pv, load_f32(v + d), fVec::loadu(acc + d)).store(acc + d);
  }
}

inline float max_of(const float* x, int64_t n) {
  fVec mv(kNegInf);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    mv = at::vec::maximum(mv, fVec::loadu(x + i));
  }
  float m = at::vec::vec_reduce_all<float>(
      [](const fVec& a, const fVec& b) { return at::vec::maximum(a, b); }, mv);
  for (; i < n; ++i) {
    m = std::max(m, x[i]);
  }
  return m;
}

// x[i] = exp(x[i] - shift) in place; returns the sum. -inf entries become 0.
inline float exp_shift_sum(float* x, int64_t n, float shift) {
  const fVec sv(shift);
  fVec acc(0.0f);
  int64_t i = 0;
  for (; i + kVec <= n; i += kVec) {
    const fVec e = (fVec::loadu(x + i) - sv).exp_u20();
    e.store(x + i);
    acc = acc + e;
  }
  float sum = acc.reduce_add();
  for (; i < n; ++i) {
    x[i] = std::exp(x[i] - shift);
    sum += x[i];
  }
  return sum;
}

}  // namespace corral::cpu
