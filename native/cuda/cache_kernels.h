// Launchers of the cache-movement kernels, callable from C++ host code without
// torch in the CUDA translation unit. Every index they are given has been
// validated by the caller. They return the launch status (cudaGetLastError).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace corral::cuda {

// Copies row_bytes from key/value token t to key/value cache slot
// slot_mapping[t], for each t with a non-negative slot. unit_bytes (16, 4 or 2)
// divides row_bytes and both token strides, and aligns every base address.
cudaError_t launch_scatter_rows(int unit_bytes, const void* key, const void* value,
                                void* key_cache, void* value_cache,
                                const int64_t* slot_mapping, int64_t num_tokens,
                                int64_t key_token_stride_bytes,
                                int64_t value_token_stride_bytes, int64_t row_bytes,
                                cudaStream_t stream);

// For every cache whose base address is in cache_addresses and every (src, dst)
// pair of mapping ([num_pairs, 2]), copies block src onto block dst. unit_bytes
// (16 or 2) divides block_bytes and aligns every base address.
cudaError_t launch_copy_blocks(int unit_bytes, const int64_t* cache_addresses,
                               int num_caches, const int64_t* mapping, int64_t num_pairs,
                               int64_t block_bytes, cudaStream_t stream);

}  // namespace corral::cuda
