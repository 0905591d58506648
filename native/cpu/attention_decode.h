// Decode kernel: one query token, the query heads of one GQA group, one range of
// key positions read straight from the paged cache. Memory bound, so each key and
// value row is loaded once for the whole group and all math stays in registers or
// L1; the result is a partial softmax state (max, sum, unnormalised output) that
// paged_attention.cpp either normalises or merges with other partitions.
#pragma once

#include "float8_rows.h"
#include "row_kernels.h"
#include "vec_math.h"

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace corral::cpu {

// Where one sequence's keys and values live, as seen by one kv head.
template <typename T>
struct PagedView {
  const T* key_cache;
  const T* value_cache;
  const int32_t* block_table;  // this sequence's row of block_tables
  int64_t block_size;
  int64_t slot_stride;  // elements between consecutive slots: num_kv_heads * head_size
  int64_t head_offset;  // elements from a slot's start to this kv head's row
  int64_t head_size;

  const T* key_row(int64_t pos) const { return key_cache + offset(pos); }
  const T* value_row(int64_t pos) const { return value_cache + offset(pos); }
  int64_t offset(int64_t pos) const {
    const int64_t block = block_table[pos / block_size];
    return (block * block_size + pos % block_size) * slot_stride + head_offset;
  }
};

// Softmax state of `rows` query rows: running max, running sum, unnormalised output.
struct PartialState {
  float* max;  // [rows]
  float* sum;  // [rows]
  float* acc;  // [rows, head_size]
};

// The row kernels decode_attend runs for queries of type T over a cache of KV:
// those of row_kernels.h (float32 math on widened rows, or vdpbf16ps scores for
// bfloat16 over bfloat16), or, for float8 caches where the CPU has the byte
// permutes, the table-lookup kernels of float8_rows.h, which keep the scaled
// query rows and the output rows in chunk order (kChunkOrder).
template <typename T, typename KV, typename = void>
struct DecodeRowKernels {
  static constexpr bool kChunkOrder = false;
  const QueryRows<T>& q;

  void score_x4(int64_t first_row, int64_t rows, int64_t hs, const KV* const* k, float* scores,
                int64_t stride) const {
    score_group_x4(q, first_row, rows, hs, k, scores, stride);
  }
  void score(int64_t first_row, int64_t rows, int64_t hs, const KV* k, float* scores,
             int64_t stride) const {
    score_group(q, first_row, rows, hs, k, scores, stride);
  }
  void axpy_x4(float* acc, int64_t rows, int64_t hs, const float* p, int64_t p_stride,
               const KV* const* v) const {
    axpy_group_x4(acc, rows, hs, p, p_stride, v);
  }
  void axpy(float* acc, int64_t rows, int64_t hs, const float* p, int64_t p_stride,
            const KV* v) const {
    axpy_group(acc, rows, hs, p, p_stride, v);
  }
};

#ifdef CORRAL_FLOAT8_TABLES
template <typename T, typename KV>
struct DecodeRowKernels<T, KV, std::enable_if_t<is_float8_v<KV>>> {
  static constexpr bool kChunkOrder = true;
  const QueryRows<T>& q;  // q.scaled in chunk order
  Float8Tables tables = float8_tables<KV>();

  void score_x4(int64_t first_row, int64_t rows, int64_t hs, const KV* const* k, float* scores,
                int64_t stride) const {
    score_group_float8_x4(q.scaled + first_row * hs, rows, hs, k, tables, scores, stride);
  }
  void score(int64_t first_row, int64_t rows, int64_t hs, const KV* k, float* scores,
             int64_t stride) const {
    score_group_float8(q.scaled + first_row * hs, rows, hs, k, tables, scores, stride);
  }
  void axpy_x4(float* acc, int64_t rows, int64_t hs, const float* p, int64_t p_stride,
               const KV* const* v) const {
    axpy_group_float8_x4(acc, rows, hs, p, p_stride, v, tables);
  }
  void axpy(float* acc, int64_t rows, int64_t hs, const float* p, int64_t p_stride,
            const KV* v) const {
    axpy_group_float8(acc, rows, hs, p, p_stride, v, tables);
  }
};
#endif

// Whether decode_attend wants `q.scaled` in chunk order (float8_rows.h); the
// outputs it leaves are always in natural order.
template <typename T, typename KV>
inline constexpr bool kDecodeQueryInChunkOrder = DecodeRowKernels<T, KV>::kChunkOrder;

// Attention of the query rows of `num_kv_heads` consecutive kv heads (starting at
// view.head_offset), `group` rows each, over key positions [begin, end), all
// visible to every row. `q` is [num_kv_heads * group, head_size] scaled float;
// `scores` is scratch of num_kv_heads * group * kDecodeChunk floats. Slots are
// walked in order and each slot's rows of all the task's kv heads are read
// together, so the cache streams through memory instead of being read in strided
// per-head pieces. Slots go four at a time (the x4 row kernels): four scores share
// one reduction and each output row is loaded and stored once per four values.
// Fills `state` (overwriting it).
constexpr int64_t kDecodeChunk = 256;

// How far ahead (in positions) the key and value rows are prefetched: one block of
// the default size. Blocks of a sequence are scattered over the cache, and the
// hardware prefetchers do not follow a jump from one block to the next.
constexpr int64_t kPrefetchAhead = 16;

// Prefetches `bytes` bytes from p into the caches.
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
    _mm_prefetch(c + off, _MM_HINT_T0);
  }
}

template <typename T, typename KV>
void decode_attend(const PagedView<KV>& view, int64_t num_kv_heads, int64_t group,
                   const QueryRows<T>& q, int64_t begin, int64_t end, float* scores,
                   PartialState state) {
  const int64_t hs = view.head_size;
  const int64_t rows = num_kv_heads * group;
  const DecodeRowKernels<T, KV> kernels{q};
  // The task's part of one cache slot: its kv heads' rows, contiguous.
  const int64_t row_bytes = num_kv_heads * hs * static_cast<int64_t>(sizeof(KV));
  for (int64_t r = 0; r < rows; ++r) {
    state.max[r] = kNegInf;
    state.sum[r] = 0.0f;
    std::fill(state.acc + r * hs, state.acc + (r + 1) * hs, 0.0f);
  }
  for (int64_t c0 = begin; c0 < end; c0 += kDecodeChunk) {
    const int64_t n = std::min(kDecodeChunk, end - c0);
    const int64_t blocked = n - n % kKeyBlock;
    for (int64_t j = 0; j < blocked; j += kKeyBlock) {
      const KV* k[kKeyBlock];
      for (int i = 0; i < kKeyBlock; ++i) {
        k[i] = view.key_row(c0 + j + i);
      }
      if (c0 + j + kPrefetchAhead + kKeyBlock <= end) {
        for (int i = 0; i < kKeyBlock; ++i) {
          prefetch_bytes(view.key_row(c0 + j + kPrefetchAhead + i), row_bytes);
        }
      }
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        const KV* kh[kKeyBlock];
        for (int i = 0; i < kKeyBlock; ++i) {
          kh[i] = k[i] + h * hs;
        }
        kernels.score_x4(h * group, group, hs, kh, scores + h * group * kDecodeChunk + j,
                         kDecodeChunk);
      }
    }
    for (int64_t j = blocked; j < n; ++j) {
      const KV* k = view.key_row(c0 + j);
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        kernels.score(h * group, group, hs, k + h * hs, scores + h * group * kDecodeChunk + j,
                      kDecodeChunk);
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      float* s = scores + r * kDecodeChunk;
      const float new_max = std::max(state.max[r], max_of(s, n));
      const float rescale = std::exp(state.max[r] - new_max);
      state.sum[r] = state.sum[r] * rescale + exp_shift_sum(s, n, new_max);
      state.max[r] = new_max;
      if (rescale != 1.0f) {
        scale_row(state.acc + r * hs, hs, rescale);
      }
    }
    for (int64_t j = 0; j < blocked; j += kKeyBlock) {
      const KV* v[kKeyBlock];
      for (int i = 0; i < kKeyBlock; ++i) {
        v[i] = view.value_row(c0 + j + i);
      }
      if (c0 + j + kPrefetchAhead + kKeyBlock <= end) {
        for (int i = 0; i < kKeyBlock; ++i) {
          prefetch_bytes(view.value_row(c0 + j + kPrefetchAhead + i), row_bytes);
        }
      }
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        const KV* vh[kKeyBlock];
        for (int i = 0; i < kKeyBlock; ++i) {
          vh[i] = v[i] + h * hs;
        }
        kernels.axpy_x4(state.acc + h * group * hs, group, hs,
                        scores + h * group * kDecodeChunk + j, kDecodeChunk, vh);
      }
    }
    for (int64_t j = blocked; j < n; ++j) {
      const KV* v = view.value_row(c0 + j);
      for (int64_t h = 0; h < num_kv_heads; ++h) {
        kernels.axpy(state.acc + h * group * hs, group, hs,
                     scores + h * group * kDecodeChunk + j, kDecodeChunk, v + h * hs);
      }
    }
  }
  if constexpr (DecodeRowKernels<T, KV>::kChunkOrder) {
    from_chunk_order(state.acc, rows, hs);
  }
}

}  // namespace corral::cpu
