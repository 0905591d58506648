// reshape_and_cache for CUDA tensors: checks the call, then scatters each new
// token's keys and values into its cache slot (block * block_size + offset); a
// negative slot is skipped.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "cache_kernels.h"
#include "host_index.h"

namespace corral::cuda {
namespace {

// Named like the CPU kernel's messages; see paged_attention_op.cpp.
constexpr const char* kOp = "reshape_and_cache";

bool aligned_to(const at::Tensor& t, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % bytes == 0;
}

void check_source(const at::Tensor& src, const at::Tensor& cache, const char* name) {
  TORCH_CHECK(src.device() == cache.device(), kOp, ": ", name, " is on ",
              src.device(), " but the cache is on ", cache.device());
  TORCH_CHECK(src.scalar_type() == cache.scalar_type(), kOp,
              ": key, value and the caches must share one dtype; ", name, " is ",
              src.scalar_type(), ", the caches are ", cache.scalar_type());
  TORCH_CHECK(src.dim() == 3 && src.size(1) == cache.size(2) &&
                  src.size(2) == cache.size(3),
              kOp, ": ", name, " must be [num_tokens, kv heads = ", cache.size(2),
              ", head_size = ", cache.size(3), "], got ", src.sizes());
  // Strides of size-1 dimensions carry no meaning and are not checked.
  TORCH_CHECK((src.stride(2) == 1 || src.size(2) == 1) &&
                  (src.stride(1) == src.size(2) || src.size(1) == 1),
              kOp, ": ", name,
              " must have contiguous [num_kv_heads, head_size] rows, got strides ",
              src.strides());
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value,
                       at::Tensor& key_cache, at::Tensor& value_cache,
                       const at::Tensor& slot_mapping) {
  TORCH_CHECK(key_cache.is_cuda(), kOp, ": key_cache must be a CUDA tensor, got ",
              key_cache.device());
  TORCH_CHECK(key_cache.dim() == 4, kOp,
              ": key_cache must be [num_blocks, block_size, num_kv_heads, "
              "head_size], got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.device() == key_cache.device() &&
                  value_cache.scalar_type() == key_cache.scalar_type() &&
                  value_cache.sizes() == key_cache.sizes(),
              kOp, ": value_cache must match key_cache in device, dtype and shape");
  TORCH_CHECK(key_cache.is_contiguous() && value_cache.is_contiguous(), kOp,
              ": the caches must be contiguous");
  const at::ScalarType dtype = key_cache.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, kOp,
              ": unsupported cache dtype ", dtype,
              " (supported: float32, float16, bfloat16)");
  check_source(key, key_cache, "key");
  TORCH_CHECK(value.sizes() == key.sizes(), kOp, ": value shape ", value.sizes(),
              " differs from key shape ", key.sizes());
  check_source(value, key_cache, "value");

  const int64_t num_tokens = key.size(0);
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  const at::Device device = key_cache.device();
  const at::Tensor slots_host =
      index_on_host(slot_mapping, kOp, "slot_mapping", at::kLong, device);
  TORCH_CHECK(slots_host.dim() == 1 && slots_host.size(0) == num_tokens, kOp,
              ": slot_mapping must be [num_tokens] = [", num_tokens, "], got ",
              slots_host.sizes());
  const int64_t* slots = slots_host.data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] < num_slots, kOp, ": slot_mapping[", t, "] = ", slots[t],
                " is out of range for a cache of ", num_slots, " slots");
  }
  if (num_tokens == 0) {
    return;
  }

  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor slots_dev = index_on_device(slot_mapping, device);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device.index());
  const int64_t row_bytes = key.size(1) * key.size(2) * key.element_size();
  const int64_t esize = key.element_size();
  auto fits = [&](int64_t unit) {
    return row_bytes % unit == 0 && key.stride(0) * esize % unit == 0 &&
           value.stride(0) * esize % unit == 0 && aligned_to(key, unit) &&
           aligned_to(value, unit) && aligned_to(key_cache, unit) &&
           aligned_to(value_cache, unit);
  };
  const int unit = fits(16) ? 16 : fits(4) ? 4 : 2;
  C10_CUDA_CHECK(launch_scatter_rows(unit, key.data_ptr(), value.data_ptr(),
                                     key_cache.data_ptr(), value_cache.data_ptr(),
                                     slots_dev.data_ptr<int64_t>(), num_tokens,
                                     key.stride(0) * esize, value.stride(0) * esize,
                                     row_bytes, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) { m.impl("reshape_and_cache", &reshape_and_cache); }

}  // namespace corral::cuda
