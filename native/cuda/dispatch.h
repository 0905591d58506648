// Host-side dispatch from a runtime dtype and head size to the kernel template
// instantiations, naming the CUDA element types the kernels are built for.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "attention.h"

namespace corral::cuda {

// torch's c10::Half / c10::BFloat16 are host-friendly wrappers; the kernels work
// on CUDA's own types so that the conversion intrinsics apply directly.
template <typename T>
struct StorageType {
  using type = T;
};
template <>
struct StorageType<at::Half> {
  using type = __half;
};
template <>
struct StorageType<at::BFloat16> {
  using type = __nv_bfloat16;
};

// Calls fn.template operator()<T, HEAD>() for the runtime dtype and head size;
// the supported set is CORRAL_CUDA_FOR_EACH_HEAD_SIZE (attention.h). Callers check the arguments
// first; the default branches catch a size admitted there without a kernel here.
template <typename Fn>
void dispatch_dtype_and_head(at::ScalarType dtype, int64_t head_size, Fn&& fn) {
  auto with_head = [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    switch (head_size) {
#define CORRAL_HEAD_CASE(HEAD) \
  case HEAD:                   \
    return fn.template operator()<T, HEAD>();
      CORRAL_CUDA_FOR_EACH_HEAD_SIZE(CORRAL_HEAD_CASE)
#undef CORRAL_HEAD_CASE
      default:
        TORCH_CHECK(false, "paged_attention: head_size must be a multiple of ",
                    kHeadSizeMultiple, " up to ", kMaxHeadSize, " on CUDA, got ", head_size);
    }
  };
  switch (dtype) {
    case at::kFloat:
      return with_head(StorageType<float>{});
    case at::kHalf:
      return with_head(StorageType<at::Half>{});
    case at::kBFloat16:
      return with_head(StorageType<at::BFloat16>{});
    default:
      TORCH_CHECK(false, "paged_attention: query dtype ", dtype,
                  " is not supported (float32, float16, bfloat16)");
  }
}

}  // namespace corral::cuda
