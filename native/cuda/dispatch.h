// Host-side dispatch from a runtime dtype and head size to the kernel template
// instantiations, naming the CUDA element types the kernels are built for.
#pragma once

#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

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
// the supported set is the one DESIGN.md promises. Callers check the arguments
// first; the default branches catch a size admitted there without a kernel here.
template <typename Fn>
void dispatch_dtype_and_head(at::ScalarType dtype, int64_t head_size, Fn&& fn) {
  auto with_head = [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    switch (head_size) {
      case 64:
        return fn.template operator()<T, 64>();
      case 80:
        return fn.template operator()<T, 80>();
      case 96:
        return fn.template operator()<T, 96>();
      case 128:
        return fn.template operator()<T, 128>();
      case 256:
        return fn.template operator()<T, 256>();
      default:
        TORCH_CHECK(false, "paged_attention: head_size must be one of 64, 80, 96, 128, "
                    "256 on CUDA, got ", head_size);
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
