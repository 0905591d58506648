// The interface between the paged_attention host entry point (a C++ file that
// sees torch) and its two kernel families (decode, prefill: CUDA files that see
// only the CUDA runtime, so that nvcc never parses torch's headers).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace corral::cuda {

// Raw pointers and sizes of one validated paged_attention call. Index tensors
// are device-resident int32 and every block id a kernel reads has been checked
// on the host.
struct AttentionParams {
  void* out;
  const void* query;
  const void* key_cache;
  const void* value_cache;
  const int32_t* query_start_loc;
  const int32_t* seq_lens;
  const int32_t* block_tables;
  float scale;
  int sliding_window;  // <= 0: no window
  int num_seqs;
  int num_heads;
  int num_kv_heads;
  int block_size;
  int max_blocks_per_seq;
};

// Decode (q_len == 1) splits each sequence's context into partitions of this
// many tokens, one thread block each; a multiple of every block size.
constexpr int kDecodePartitionSize = 512;
// A decode thread block serves up to this many query heads of one kv head.
constexpr int kDecodeMaxHeadsPerBlock = 8;

// Scratch for the decode split: per (seq, head, partition) the running max and
// exp-sum, and per (seq, head, partition, dim) the unnormalised output.
struct DecodeScratch {
  float* partial_out;
  float* partial_max;
  float* partial_sum;
  int num_partitions;
  int heads_per_block;
};

// Head sizes the kernels are built for: every multiple of 16 up to 256. A row
// is then a whole number of 16-byte vectors for every element type, and 256
// bounds the registers and shared memory a thread block needs. corral's model
// loader (corral.model.head_sizes) mirrors this rule, so that a model the
// kernels cannot take fails at load, not at its first step.
constexpr int kHeadSizeMultiple = 16;
constexpr int kMaxHeadSize = 256;
constexpr bool is_supported_head_size(int64_t head_size) {
  return head_size > 0 && head_size <= kMaxHeadSize && head_size % kHeadSizeMultiple == 0;
}

// X-macro over the supported head sizes: X(16) X(32) ... X(256). The kernel files
// instantiate their templates with it and the dispatch switches over it, so the
// set is written once.
#define CORRAL_CUDA_FOR_EACH_HEAD_SIZE(X) \
  X(16) X(32) X(48) X(64) X(80) X(96) X(112) X(128) \
  X(144) X(160) X(176) X(192) X(208) X(224) X(240) X(256)

// Launchers return the launch status (cudaGetLastError) for the caller to check.
// T is float, __half or __nv_bfloat16; HEAD is one of the supported head sizes.
template <typename T, int HEAD>
cudaError_t launch_decode(const AttentionParams& params, const DecodeScratch& scratch,
                          cudaStream_t stream);

template <typename T, int HEAD>
cudaError_t launch_prefill(const AttentionParams& params, int max_query_len,
                           cudaStream_t stream);

}  // namespace corral::cuda
