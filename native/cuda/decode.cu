// Decode attention (one query token per sequence), flash-decoding style.
//
// Grid: (query-head chunk, sequence, context partition). A thread block reads
// the keys and values of one kv head once for all the query heads of its chunk
// (GQA), over one partition of kDecodePartitionSize tokens, and writes a partial
// result: max logit, exp-sum and unnormalised output. A second kernel merges the
// partitions. With a single partition the first kernel writes the output itself.
//
// Partitions are aligned to absolute token positions, so with a sliding window
// the partitions wholly before the window do nothing and the merge skips them.
#include "attention.h"
#include "common.cuh"

namespace corral::cuda {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / kWarpSize;
constexpr int kMinBlockSize = 8;
// Tokens whose loads a lane issues before it uses the first of them.
constexpr int kUnroll = 4;

// How one warp covers rows of the cache: kLanesPerRow lanes share a row (a
// power of two, so a xor-shuffle reduces it), each holding kVecsPerLane
// 16-byte vectors; the warp walks kRowsPerWarp tokens at a time.
template <typename T, int HEAD>
struct RowLayout {
  static constexpr int kVec = kVecElems<T>;
  static_assert(HEAD % kVec == 0, "rows must be whole 16-byte vectors");
  static constexpr int kVecsPerRow = HEAD / kVec;
  static constexpr int kVecsPerLane = ceil_div(kVecsPerRow, kWarpSize);
  static constexpr int kLanesPerRow =
      next_pow2(ceil_div(kVecsPerRow, kVecsPerLane));
  static constexpr int kRowsPerWarp = kWarpSize / kLanesPerRow;
  static constexpr int kRowsPerStep = kRowsPerWarp * kWarps;
};

struct SeqRange {
  int begin;  // first token this partition reads
  int end;    // one past the last
};

// The context window of a decode query (position seq_len - 1) within partition
// `part`; empty when the partition lies outside the window.
__device__ __forceinline__ SeqRange partition_range(int seq_len, int window,
                                                    int part) {
  const int first = window > 0 ? max(0, seq_len - window) : 0;
  return {max(first, part * kDecodePartitionSize),
          min(seq_len, (part + 1) * kDecodePartitionSize)};
}

template <typename T, int HEAD>
__global__ void __launch_bounds__(kThreads)
    decode_partition_kernel(AttentionParams p, DecodeScratch scratch) {
  using L = RowLayout<T, HEAD>;
  const int seq = blockIdx.y;
  const int part = blockIdx.z;
  const int q_index = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] - q_index != 1) {
    return;
  }
  const int seq_len = p.seq_lens[seq];
  const SeqRange range = partition_range(seq_len, p.sliding_window, part);
  if (range.begin >= range.end) {
    return;
  }
  const int num_heads_here = scratch.heads_per_block;
  const int head0 = blockIdx.x * num_heads_here;
  const int kv_head = head0 / (p.num_heads / p.num_kv_heads);

  __shared__ float logits[kDecodeMaxHeadsPerBlock][kDecodePartitionSize];
  __shared__ float acc_smem[kDecodeMaxHeadsPerBlock][HEAD];
  __shared__ float head_sum[kDecodeMaxHeadsPerBlock];
  __shared__ float head_max[kDecodeMaxHeadsPerBlock];
  __shared__ int block_ids[kDecodePartitionSize / kMinBlockSize];

  const int tid = threadIdx.x;
  const int warp = tid / kWarpSize;
  const int lane = tid % kWarpSize;
  const int row = lane / L::kLanesPerRow;
  const int row_lane = lane % L::kLanesPerRow;

  const int bs = p.block_size;
  const int part_first_block = part * (kDecodePartitionSize / bs);
  const int first_block = range.begin / bs;
  const int last_block = (range.end - 1) / bs;
  const int32_t* table = p.block_tables + int64_t(seq) * p.max_blocks_per_seq;
  for (int b = first_block + tid; b <= last_block; b += kThreads) {
    block_ids[b - part_first_block] = table[b];
  }
  for (int i = tid; i < kDecodeMaxHeadsPerBlock * HEAD; i += kThreads) {
    acc_smem[i / HEAD][i % HEAD] = 0.f;
  }

  // This lane's slice of each query head, pre-scaled.
  const T* query = static_cast<const T*>(p.query) +
                   (int64_t(q_index) * p.num_heads + head0) * HEAD;
  float q[kDecodeMaxHeadsPerBlock][L::kVecsPerLane][L::kVec];
#pragma unroll
  for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) {
#pragma unroll
    for (int i = 0; i < L::kVecsPerLane; ++i) {
      const int v = row_lane + i * L::kLanesPerRow;
      if (g < num_heads_here && v < L::kVecsPerRow) {
        load_vec(query + g * HEAD + v * L::kVec, q[g][i]);
#pragma unroll
        for (int e = 0; e < L::kVec; ++e) {
          q[g][i][e] *= p.scale;
        }
      } else {
#pragma unroll
        for (int e = 0; e < L::kVec; ++e) {
          q[g][i][e] = 0.f;
        }
      }
    }
  }
  __syncthreads();

  const int64_t token_stride = int64_t(p.num_kv_heads) * HEAD;
  auto row_offset = [&](int token) -> int64_t {
    const int block = block_ids[token / bs - part_first_block];
    return (int64_t(block) * bs + token % bs) * token_stride +
           int64_t(kv_head) * HEAD;
  };

  // Logits. The loop bound depends on the warp only, so every lane reaches the
  // shuffles; lanes past the end compute on zeros and store nothing. Each lane
  // issues the loads of kUnroll tokens before using any, to keep enough bytes
  // in flight for the memory system.
  const T* key_cache = static_cast<const T*>(p.key_cache);
  for (int base = range.begin + warp * L::kRowsPerWarp; base < range.end;
       base += L::kRowsPerStep * kUnroll) {
    Vec16<T> raw[kUnroll][L::kVecsPerLane];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int token = base + u * L::kRowsPerStep + row;
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
        const int v = row_lane + i * L::kLanesPerRow;
        raw[u][i] = token < range.end && v < L::kVecsPerRow
                        ? load16(key_cache + row_offset(token) + v * L::kVec)
                        : Vec16<T>{};
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int token = base + u * L::kRowsPerStep + row;
      float k[L::kVecsPerLane][L::kVec];
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
        to_floats(raw[u][i], k[i]);
      }
#pragma unroll
      for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) {
        // Uniform over the thread block, so no lane skips a shuffle alone.
        if (g >= num_heads_here) {
          break;
        }
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < L::kVecsPerLane; ++i) {
#pragma unroll
          for (int e = 0; e < L::kVec; ++e) {
            dot += q[g][i][e] * k[i][e];
          }
        }
        dot = group_sum<L::kLanesPerRow>(dot);
        if (token < range.end && row_lane == 0) {
          logits[g][token - range.begin] = dot;
        }
      }
    }
  }
  __syncthreads();

  // Softmax numerators within the partition, one warp per head.
  const int n = range.end - range.begin;
  for (int g = warp; g < num_heads_here; g += kWarps) {
    float m = -INFINITY;
    for (int i = lane; i < n; i += kWarpSize) {
      m = fmaxf(m, logits[g][i]);
    }
    m = group_max<kWarpSize>(m);
    float s = 0.f;
    for (int i = lane; i < n; i += kWarpSize) {
      const float e = expf(logits[g][i] - m);
      logits[g][i] = e;
      s += e;
    }
    s = group_sum<kWarpSize>(s);
    if (lane == 0) {
      head_max[g] = m;
      head_sum[g] = s;
    }
  }
  __syncthreads();

  // Weighted values: each row group accumulates its tokens, then the rows of
  // a warp fold together by shuffles and the warps by shared-memory atomics.
  const T* value_cache = static_cast<const T*>(p.value_cache);
  float acc[kDecodeMaxHeadsPerBlock][L::kVecsPerLane][L::kVec] = {};
  for (int base = range.begin + warp * L::kRowsPerWarp; base < range.end;
       base += L::kRowsPerStep * kUnroll) {
    Vec16<T> raw[kUnroll][L::kVecsPerLane];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int token = base + u * L::kRowsPerStep + row;
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
        const int v = row_lane + i * L::kLanesPerRow;
        raw[u][i] = token < range.end && v < L::kVecsPerRow
                        ? load16(value_cache + row_offset(token) + v * L::kVec)
                        : Vec16<T>{};
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int token = base + u * L::kRowsPerStep + row;
      if (token >= range.end) {
        continue;
      }
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
        float x[L::kVec];
        to_floats(raw[u][i], x);
#pragma unroll
        for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) {
          if (g >= num_heads_here) {
            break;
          }
          const float w = logits[g][token - range.begin];
#pragma unroll
          for (int e = 0; e < L::kVec; ++e) {
            acc[g][i][e] += w * x[e];
          }
        }
      }
    }
  }
#pragma unroll
  for (int offset = L::kLanesPerRow; offset < kWarpSize; offset *= 2) {
#pragma unroll
    for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) {
      if (g >= num_heads_here) {
        break;
      }
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
#pragma unroll
        for (int e = 0; e < L::kVec; ++e) {
          acc[g][i][e] += __shfl_xor_sync(0xffffffffu, acc[g][i][e], offset);
        }
      }
    }
  }
  if (row == 0) {
#pragma unroll
    for (int g = 0; g < kDecodeMaxHeadsPerBlock; ++g) {
#pragma unroll
      for (int i = 0; i < L::kVecsPerLane; ++i) {
        const int v = row_lane + i * L::kLanesPerRow;
        if (g < num_heads_here && v < L::kVecsPerRow) {
#pragma unroll
          for (int e = 0; e < L::kVec; ++e) {
            atomicAdd(&acc_smem[g][v * L::kVec + e], acc[g][i][e]);
          }
        }
      }
    }
  }
  __syncthreads();

  for (int i = tid; i < num_heads_here * HEAD; i += kThreads) {
    const int g = i / HEAD;
    const int d = i % HEAD;
    const int head = head0 + g;
    if (scratch.num_partitions == 1) {
      T* out = static_cast<T*>(p.out);
      out[(int64_t(q_index) * p.num_heads + head) * HEAD + d] =
          from_float<T>(acc_smem[g][d] / head_sum[g]);
    } else {
      const int64_t slot =
          (int64_t(seq) * p.num_heads + head) * scratch.num_partitions + part;
      scratch.partial_out[slot * HEAD + d] = acc_smem[g][d];
      if (d == 0) {
        scratch.partial_max[slot] = head_max[g];
        scratch.partial_sum[slot] = head_sum[g];
      }
    }
  }
}

// Merges the partitions of one (sequence, head): rescale each partial result
// to the global max and divide by the total exp-sum.
template <typename T, int HEAD>
__global__ void __launch_bounds__(kThreads)
    decode_merge_kernel(AttentionParams p, DecodeScratch scratch) {
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int q_index = p.query_start_loc[seq];
  if (p.query_start_loc[seq + 1] - q_index != 1) {
    return;
  }
  const int seq_len = p.seq_lens[seq];
  const int first = p.sliding_window > 0 ? max(0, seq_len - p.sliding_window) : 0;
  const int first_part = first / kDecodePartitionSize;
  const int last_part = (seq_len - 1) / kDecodePartitionSize;
  const int64_t slot0 = (int64_t(seq) * p.num_heads + head) * scratch.num_partitions;

  float global_max = -INFINITY;
  for (int part = first_part; part <= last_part; ++part) {
    global_max = fmaxf(global_max, scratch.partial_max[slot0 + part]);
  }
  float total = 0.f;
  for (int part = first_part; part <= last_part; ++part) {
    total += expf(scratch.partial_max[slot0 + part] - global_max) *
             scratch.partial_sum[slot0 + part];
  }
  T* out = static_cast<T*>(p.out) + (int64_t(q_index) * p.num_heads + head) * HEAD;
  for (int d = threadIdx.x; d < HEAD; d += kThreads) {
    float x = 0.f;
    for (int part = first_part; part <= last_part; ++part) {
      const float w = expf(scratch.partial_max[slot0 + part] - global_max);
      x += w * scratch.partial_out[(slot0 + part) * HEAD + d];
    }
    out[d] = from_float<T>(x / total);
  }
}

}  // namespace

template <typename T, int HEAD>
cudaError_t launch_decode(const AttentionParams& params, const DecodeScratch& scratch,
                          cudaStream_t stream) {
  static_assert(kDecodePartitionSize % kMinBlockSize == 0);
  const dim3 grid(params.num_heads / scratch.heads_per_block, params.num_seqs,
                  scratch.num_partitions);
  decode_partition_kernel<T, HEAD><<<grid, kThreads, 0, stream>>>(params, scratch);
  if (scratch.num_partitions > 1) {
    const dim3 merge_grid(params.num_heads, params.num_seqs);
    decode_merge_kernel<T, HEAD><<<merge_grid, kThreads, 0, stream>>>(params, scratch);
  }
  return cudaGetLastError();
}

#define CORRAL_INSTANTIATE_DECODE(T, HEAD)                                   \
  template cudaError_t launch_decode<T, HEAD>(const AttentionParams&,         \
                                              const DecodeScratch&, cudaStream_t);
#define CORRAL_INSTANTIATE_DECODE_FLOAT(HEAD) CORRAL_INSTANTIATE_DECODE(float, HEAD)
#define CORRAL_INSTANTIATE_DECODE_HALF(HEAD) CORRAL_INSTANTIATE_DECODE(__half, HEAD)
#define CORRAL_INSTANTIATE_DECODE_BF16(HEAD) CORRAL_INSTANTIATE_DECODE(__nv_bfloat16, HEAD)

CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_DECODE_FLOAT)
CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_DECODE_HALF)
CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_INSTANTIATE_DECODE_BF16)

#undef CORRAL_INSTANTIATE_DECODE_FLOAT
#undef CORRAL_INSTANTIATE_DECODE_HALF
#undef CORRAL_INSTANTIATE_DECODE_BF16
#undef CORRAL_INSTANTIATE_DECODE

}  // namespace corral::cuda
