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

#if defined(CPU_CAPABILITY_AVX512) && defined(__AVX512BF16__)
#define CORRAL_AVX512_BF16 1
#endif

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

#ifdef CORRAL_AVX512_BF16
// vcvtneps2bf16 rounds to nearest even like torch's conversion (one instruction
// instead of nine); it flushes float32 subnormals (below 1.2e-38) to zero.
template <>
inline fVec round_to<at::BFloat16>(const fVec& v) {
  const __m256i bits = (__m256i)_mm512_cvtneps_pbh(v);
  return fVec(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16)));
}
#endif

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

#if defined(CPU_CAPABILITY_AVX512)
// to_cache for kVec lanes at once, bit for bit: the same saturation, then c10's
// float32 -> float8 rounding (nearest even; subnormals through a float add) in
// integer lanes. NaN stays NaN (0x7F with its sign), as in the scalar path.
template <typename KV>
inline void store_to_cache(KV* p, const fVec& v) {
  static_assert(is_float8_v<KV>, "store_to_cache writes float8 caches");
  constexpr bool e4m3 = std::is_same_v<KV, c10::Float8_e4m3fn>;
  constexpr float top = e4m3 ? 448.0f : 57344.0f;
  // The constants of c10's fp8e4m3fn_from_fp32_value / fp8e5m2_from_fp32_value.
  constexpr uint32_t nan_from = e4m3 ? (1087u << 20) : (143u << 23);
  constexpr uint32_t denorm_mask = e4m3 ? (141u << 23) : (134u << 23);
  constexpr uint32_t normal_from = e4m3 ? (121u << 23) : (113u << 23);
  constexpr int shift = e4m3 ? 20 : 21;
  constexpr uint32_t rebias = e4m3 ? ((uint32_t)(7 - 127) << 23) + 0x7FFFFu
                                   : ((uint32_t)(15 - 127) << 23) + 0xFFFFFu;
  // max_ps / min_ps return their second operand when either is NaN.
  const __m512 x = _mm512_min_ps(_mm512_set1_ps(top), _mm512_max_ps(_mm512_set1_ps(-top), v));
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i sign = _mm512_and_si512(bits, _mm512_set1_epi32(static_cast<int>(0x80000000u)));
  const __m512i f = _mm512_xor_si512(bits, sign);
  const __m512i dmask = _mm512_set1_epi32(static_cast<int>(denorm_mask));
  const __m512i sub = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(f), _mm512_castsi512_ps(dmask))),
      dmask);
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(f, shift), _mm512_set1_epi32(1));
  const __m512i normal = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(f, _mm512_set1_epi32(static_cast<int>(rebias))), odd),
      shift);
  __m512i r = _mm512_mask_blend_epi32(
      _mm512_cmplt_epu32_mask(f, _mm512_set1_epi32(static_cast<int>(normal_from))), normal, sub);
  r = _mm512_mask_mov_epi32(
      r, _mm512_cmpge_epu32_mask(f, _mm512_set1_epi32(static_cast<int>(nan_from))),
      _mm512_set1_epi32(0x7F));
  r = _mm512_or_si512(r, _mm512_srli_epi32(sign, 24));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(r));
}
#endif

template <typename T>
inline void store_f32(T* p, const fVec& v) {
  const auto packed = at::vec::convert_from_float<T>(v, v);
  packed.store(p, kVec);
}

template <>
inline void store_f32<float>(float* p, const fVec& v) {
  v.store(p);
}

#ifdef CORRAL_AVX512_BF16
template <>
inline void store_f32<at::BFloat16>(at::BFloat16* p, const fVec& v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
}
#endif

// silu(x) = x / (1 + exp(-x)) for activations stored in a 16-bit type: exp_u20 and
// a refined reciprocal estimate instead of the exact exp and division, whose error
// (about 1e-6 relative) is far below a 16-bit type's rounding step. Below -87 (where
// exp(-x) would overflow) it returns x * 1.7e-38 instead of a value under 1e-35.
inline fVec silu_16bit(const fVec& x) {
  const fVec e = at::vec::minimum(x.neg(), fVec(87.0f)).exp_u20();
  const fVec d = e + fVec(1.0f);
#if defined(CPU_CAPABILITY_AVX512)
  const __m512 r0 = _mm512_rcp14_ps(d);
  // One Newton step: r = r0 * (2 - d * r0).
  const __m512 r = _mm512_mul_ps(r0, _mm512_fnmadd_ps(d, r0, _mm512_set1_ps(2.0f)));
  return x * fVec(r);
#else
  return x / d;
#endif
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
