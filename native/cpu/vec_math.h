// Vector helpers shared by the CPU attention kernels: float32 loads and stores
// of float / bfloat16 / float16 rows, and the small softmax primitives. All math
// runs in float32 whatever the storage dtype.
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

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
