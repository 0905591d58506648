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

// Launchers return the launch status (cudaGetLastError) for the caller to check.
// T is float, __half or __nv_bfloat16; HEAD is 64, 80, 96, 128 or 256.
template <typename T, int HEAD>
cudaError_t launch_decode(const AttentionParams& params, const DecodeScratch& scratch,
                          cudaStream_t stream);

template <typename T, int HEAD>
cudaError_t launch_prefill(const AttentionParams& params, int max_query_len,
                           cudaStream_t stream);

}  // namespace corral::cuda
