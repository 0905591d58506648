// Launcher of the add_lora kernels (the batched multi-LoRA delta), callable from host
// code without torch in the CUDA translation unit. The caller has checked every
// argument, the slot indices included.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "fused_kernels.h"

namespace corral::cuda {

// Most output slices of one fused projection (q, k, v is three).
constexpr int kMaxLoraSlices = 8;

struct LoraSlices {
  int count;
  int64_t end[kMaxLoraSlices];  // exclusive end column of each slice
};

// out[t, c0:c1] += T(T(x[t] . a[s, j*rank : (j+1)*rank]) @ b[s, :, c0:c1]) per slice j,
// s = token_slots[t] (device, int64, each in [-1, max_loras)). shrunk is float32
// scratch of [num_tokens, num_slices * rank].
cudaError_t launch_add_lora(FusedDtype dtype, void* out, int64_t out_stride, const void* x,
                            int64_t x_stride, const void* lora_a, const void* lora_b,
                            const int64_t* token_slots, float* shrunk, int64_t num_tokens,
                            int64_t in_features, int64_t out_features, int64_t rank,
                            LoraSlices slices, cudaStream_t stream);

}  // namespace corral::cuda
