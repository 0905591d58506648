// Prefill attention (q_len > 1): a causal chunk of query tokens on top of an
// already-cached prefix, tiled in the manner of FlashAttention-2.
//
// Grid: (query tile, query head, sequence). A thread block holds kTileQueries
// query rows of one head in shared memory and walks the keys of its causal
// (and sliding) window in tiles of kTileKeys, gathered from the paged cache into
// shared memory as float32. Each warp owns kRowsPerWarp query rows and keeps
// their running max, exp-sum and output in registers (online softmax); a lane
// scores one key of the tile per row and owns HEAD / 32 output columns.
//
// Sequences with q_len == 1 belong to the decode kernel and are skipped here.
#include "attention.h"
#include "common.cuh"

namespace corral::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kTileQueries = 16;
constexpr int kRowsPerWarp = kTileQueries / kWarps;
constexpr int kTileKeys = kWarpSize;  // one key per lane when scoring

template <int HEAD>
struct PrefillSmem {
  // The key tile is padded by one column so that 32 lanes reading 32 different
  // keys at the same column hit 32 different banks.
  static constexpr int kKeyStride = HEAD + 1;
  static constexpr int kQueryFloats = kTileQueries * HEAD;
  static constexpr int kKeyFloats = kTileKeys * kKeyStride;
  static constexpr int kValueFloats = kTileKeys * HEAD;
  static constexpr size_t kBytes =
      sizeof(float) * (kQueryFloats + kKeyFloats + kValueFloats);
};

template <typename T, int HEAD>
__global__ void __launch_bounds__(kThreads) prefill_kernel(AttentionParams p) {
  using S = PrefillSmem<HEAD>;
  constexpr int kVec = kVecElems<T>;
  constexpr int kVecsPerRow = HEAD / kVec;
  constexpr int kColsPerLane = ceil_div(HEAD, kWarpSize);

  const int seq = blockIdx.z;
  const int head = blockIdx.y;
  const int q_begin = p.query_start_loc[seq];
  const int q_len = p.query_start_loc[seq + 1] - q_begin;
  const int tile_first = blockIdx.x * kTileQueries;
  if (q_len <= 1 || tile_first >= q_len) {
    return;
  }
  const int tile_rows = min(kTileQueries, q_len - tile_first);
  const int seq_len = p.seq_lens[seq];
  // Position of the tile's first query in the sequence.
  const int pos_first = seq_len - q_len + tile_first;
  const int window = p.sliding_window;
  const int key_begin = window > 0 ? max(0, pos_first - window + 1) : 0;
  const int key_end = pos_first + tile_rows;
  const int kv_head = head / (p.num_heads / p.num_kv_heads);

  extern __shared__ float smem[];
  float* q_tile = smem;
  float* k_tile = q_tile + S::kQueryFloats;
  float* v_tile = k_tile + S::kKeyFloats;

  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;

  const T* query = static_cast<const T*>(p.query);
  for (int i = tid; i < kTileQueries * kVecsPerRow; i += kThreads) {
    const int r = i / kVecsPerRow;
    const int c = (i % kVecsPerRow) * kVec;
    float x[kVec] = {};
    if (r < tile_rows) {
      const int64_t token = int64_t(q_begin) + tile_first + r;
      load_vec(query + (token * p.num_heads + head) * HEAD + c, x);
    }
#pragma unroll
    for (int e = 0; e < kVec; ++e) {
      q_tile[r * HEAD + c + e] = x[e] * p.scale;
    }
  }

  float row_max[kRowsPerWarp];
  float row_sum[kRowsPerWarp];
  float acc[kRowsPerWarp][kColsPerLane];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    row_max[r] = -INFINITY;
    row_sum[r] = 0.f;
#pragma unroll
    for (int c = 0; c < kColsPerLane; ++c) {
      acc[r][c] = 0.f;
    }
  }

  const T* key_cache = static_cast<const T*>(p.key_cache);
  const T* value_cache = static_cast<const T*>(p.value_cache);
  const int32_t* table = p.block_tables + int64_t(seq) * p.max_blocks_per_seq;
  const int64_t token_stride = int64_t(p.num_kv_heads) * HEAD;
  const int bs = p.block_size;

  for (int tile_key0 = key_begin; tile_key0 < key_end; tile_key0 += kTileKeys) {
    __syncthreads();  // the previous tile is no longer read
    for (int i = tid; i < kTileKeys * kVecsPerRow; i += kThreads) {
      const int j = i / kVecsPerRow;
      const int c = (i % kVecsPerRow) * kVec;
      const int key = tile_key0 + j;
      // Keys past the window's end are zero, not garbage: their weight is
      // zero and 0 * NaN would poison the output.
      float k[kVec] = {};
      float v[kVec] = {};
      if (key < key_end) {
        const int64_t offset =
            (int64_t(table[key / bs]) * bs + key % bs) * token_stride +
            int64_t(kv_head) * HEAD + c;
        load_vec(key_cache + offset, k);
        load_vec(value_cache + offset, v);
      }
#pragma unroll
      for (int e = 0; e < kVec; ++e) {
        k_tile[j * S::kKeyStride + c + e] = k[e];
        v_tile[j * HEAD + c + e] = v[e];
      }
    }
    __syncthreads();

    // Scores of key (tile_key0 + lane) against this warp's rows.
    float score[kRowsPerWarp] = {};
#pragma unroll 8
    for (int d = 0; d < HEAD; ++d) {
      const float k = k_tile[lane * S::kKeyStride + d];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        score[r] += q_tile[(warp * kRowsPerWarp + r) * HEAD + d] * k;
      }
    }

    const int key = tile_key0 + lane;
    float weight[kRowsPerWarp];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int row = warp * kRowsPerWarp + r;
      const int pos = pos_first + row;
      const bool visible = row < tile_rows && key <= pos &&
                           (window <= 0 || key > pos - window);
      const float s = visible ? score[r] : -INFINITY;
      const float new_max = fmaxf(row_max[r], group_max<kWarpSize>(s));
      // A row that has seen no visible key yet keeps its empty state.
      const bool empty = new_max == -INFINITY;
      const float rescale = empty ? 1.f : expf(row_max[r] - new_max);
      weight[r] = visible ? expf(s - new_max) : 0.f;
      row_sum[r] = row_sum[r] * rescale + group_sum<kWarpSize>(weight[r]);
      row_max[r] = new_max;
#pragma unroll
      for (int c = 0; c < kColsPerLane; ++c) {
        acc[r][c] *= rescale;
      }
    }

    for (int j = 0; j < kTileKeys; ++j) {
      float w[kRowsPerWarp];
#pragma unroll
      for (int r = 0; r < kRowsPerWarp; ++r) {
        w[r] = __shfl_sync(0xffffffffu, weight[r], j);
      }
#pragma unroll
      for (int c = 0; c < kColsPerLane; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < HEAD) {
          const float v = v_tile[j * HEAD + d];
#pragma unroll
          for (int r = 0; r < kRowsPerWarp; ++r) {
            acc[r][c] += w[r] * v;
          }
        }
      }
    }
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int row = warp * kRowsPerWarp + r;
    if (row >= tile_rows) {
      continue;
    }
    const int64_t token = int64_t(q_begin) + tile_first + row;
    const float inv_sum = 1.f / row_sum[r];
#pragma unroll
    for (int c = 0; c < kColsPerLane; ++c) {
      const int d = lane + c * kWarpSize;
      if (d < HEAD) {
        out[(token * p.num_heads + head) * HEAD + d] = from_float<T>(acc[r][c] * inv_sum);
      }
    }
  }
}

}  // namespace

template <typename T, int HEAD>
cudaError_t launch_prefill(const AttentionParams& params, int max_query_len,
                           cudaStream_t stream) {
  constexpr size_t smem = PrefillSmem<HEAD>::kBytes;
  auto* kernel = prefill_kernel<T, HEAD>;
  // Large heads need more than the 48 KiB a kernel gets without opting in.
  const cudaError_t status = cudaFuncSetAttribute(
      kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (status != cudaSuccess) {
    return status;
  }
  const dim3 grid(ceil_div(max_query_len, kTileQueries), params.num_heads,
                  params.num_seqs);
  kernel<<<grid, kThreads, smem, stream>>>(params);
  return cudaGetLastError();
}

#define CORRAL_INSTANTIATE_PREFILL(T, HEAD) \
  template cudaError_t launch_prefill<T, HEAD>(const AttentionParams&, int, cudaStream_t);
#define CORRAL_INSTANTIATE_PREFILL_FLOAT(HEAD) CORRAL_INSTANTIATE_PREFILL(float, HEAD)
#define CORRAL_INSTANTIATE_PREFILL_HALF(HEAD) CORRAL_INSTANTIATE_PREFILL(__half, HEAD)
#define CORRAL_INSTANTIATE_PREFILL_BF16(HEAD) CORRAL_INSTANTIATE_PREFILL(__nv_bfloat16, HEAD)

CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_PREFILL_FLOAT)
CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_PREFILL_HALF)
CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_PREFILL_BF16)

#undef CORRAL_INSTANTIATE_PREFILL_FLOAT
#undef CORRAL_INSTANTIATE_PREFILL_HALF
#undef CORRAL_INSTANTIATE_PREFILL_BF16
#undef CORRAL_INSTANTIATE_PREFILL

}  // namespace corral::cuda
