// The cache-movement kernels: scattering new tokens into their cache slots
// (reshape_and_cache) and copying blocks inside device caches (copy_blocks).
// Both are plain memory copies in the widest unit the layout allows.
#include "cache_kernels.h"

namespace corral::cuda {
namespace {

constexpr int kScatterThreads = 128;
constexpr int kCopyThreads = 256;

// One thread block per token.
template <typename Unit>
__global__ void __launch_bounds__(kScatterThreads)
    scatter_rows_kernel(const Unit* key, const Unit* value, Unit* key_cache,
                        Unit* value_cache, const int64_t* slot_mapping,
                        int64_t key_token_stride, int64_t value_token_stride,
                        int64_t row_units) {
  const int64_t token = blockIdx.x;
  const int64_t slot = slot_mapping[token];
  if (slot < 0) {
    return;
  }
  const Unit* k = key + token * key_token_stride;
  const Unit* v = value + token * value_token_stride;
  Unit* kc = key_cache + slot * row_units;
  Unit* vc = value_cache + slot * row_units;
  for (int64_t i = threadIdx.x; i < row_units; i += kScatterThreads) {
    kc[i] = k[i];
    vc[i] = v[i];
  }
}

template <typename Unit>
cudaError_t scatter_rows(const void* key, const void* value, void* key_cache,
                         void* value_cache, const int64_t* slot_mapping,
                         int64_t num_tokens, int64_t key_stride, int64_t value_stride,
                         int64_t row_bytes, cudaStream_t stream) {
  constexpr int64_t unit = sizeof(Unit);
  scatter_rows_kernel<Unit><<<num_tokens, kScatterThreads, 0, stream>>>(
      static_cast<const Unit*>(key), static_cast<const Unit*>(value),
      static_cast<Unit*>(key_cache), static_cast<Unit*>(value_cache), slot_mapping,
      key_stride / unit, value_stride / unit, row_bytes / unit);
  return cudaGetLastError();
}

// Grid: (pair, cache).
template <typename Unit>
__global__ void __launch_bounds__(kCopyThreads)
    copy_blocks_kernel(const int64_t* cache_addresses, const int64_t* mapping,
                       int64_t block_units) {
  Unit* cache = reinterpret_cast<Unit*>(cache_addresses[blockIdx.y]);
  const int64_t src = mapping[2 * blockIdx.x];
  const int64_t dst = mapping[2 * blockIdx.x + 1];
  const Unit* from = cache + src * block_units;
  Unit* to = cache + dst * block_units;
  for (int64_t i = threadIdx.x; i < block_units; i += kCopyThreads) {
    to[i] = from[i];
  }
}

template <typename Unit>
cudaError_t copy_blocks(const int64_t* cache_addresses, int num_caches,
                        const int64_t* mapping, int64_t num_pairs, int64_t block_bytes,
                        cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>(num_pairs), static_cast<unsigned>(num_caches));
  copy_blocks_kernel<Unit><<<grid, kCopyThreads, 0, stream>>>(
      cache_addresses, mapping, block_bytes / static_cast<int64_t>(sizeof(Unit)));
  return cudaGetLastError();
}

}  // namespace

cudaError_t launch_scatter_rows(int unit_bytes, const void* key, const void* value,
                                void* key_cache, void* value_cache,
                                const int64_t* slot_mapping, int64_t num_tokens,
                                int64_t key_token_stride_bytes,
                                int64_t value_token_stride_bytes, int64_t row_bytes,
                                cudaStream_t stream) {
  switch (unit_bytes) {
    case 16:
      return scatter_rows<uint4>(key, value, key_cache, value_cache, slot_mapping,
                                 num_tokens, key_token_stride_bytes,
                                 value_token_stride_bytes, row_bytes, stream);
    case 4:
      return scatter_rows<uint32_t>(key, value, key_cache, value_cache, slot_mapping,
                                    num_tokens, key_token_stride_bytes,
                                    value_token_stride_bytes, row_bytes, stream);
    case 2:
      return scatter_rows<uint16_t>(key, value, key_cache, value_cache, slot_mapping,
                                    num_tokens, key_token_stride_bytes,
                                    value_token_stride_bytes, row_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

cudaError_t launch_copy_blocks(int unit_bytes, const int64_t* cache_addresses,
                               int num_caches, const int64_t* mapping, int64_t num_pairs,
                               int64_t block_bytes, cudaStream_t stream) {
  switch (unit_bytes) {
    case 16:
      return copy_blocks<uint4>(cache_addresses, num_caches, mapping, num_pairs,
                                block_bytes, stream);
    case 2:
      return copy_blocks<uint16_t>(cache_addresses, num_caches, mapping, num_pairs,
                                   block_bytes, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace corral::cuda
