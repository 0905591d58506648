// add_lora for CUDA tensors: the checks of the CPU kernel (same messages), the slot
// indices validated on the host before the kernels may trust them (see host_index.h:
// pass token_slots on the CPU to avoid a synchronisation), then two kernel launches.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "host_index.h"
#include "lora_kernels.h"

namespace corral::cuda {
namespace {

void check_lora_tensor(const at::Tensor& t, const char* name, const at::Tensor& x) {
  TORCH_CHECK(t.is_cuda() && t.device() == x.device(), "add_lora: ", name,
              " must be a CUDA tensor on ", x.device(), ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "add_lora: ", name, " must have dtype ",
              x.scalar_type(), " (the dtype of x), got ", t.scalar_type());
}

void add_lora(at::Tensor& out, const at::Tensor& x, const at::Tensor& lora_a,
              const at::Tensor& lora_b, const at::Tensor& token_slots,
              at::IntArrayRef output_slices) {
  TORCH_CHECK(x.is_cuda(), "add_lora: x must be a CUDA tensor, got ", x.device());
  FusedDtype dtype;
  switch (x.scalar_type()) {
    case at::kFloat:
      dtype = FusedDtype::kFloat;
      break;
    case at::kHalf:
      dtype = FusedDtype::kHalf;
      break;
    case at::kBFloat16:
      dtype = FusedDtype::kBFloat16;
      break;
    default:
      TORCH_CHECK(false, "add_lora: x dtype must be float32, bfloat16 or float16, got ",
                  x.scalar_type());
  }
  check_lora_tensor(out, "out", x);
  check_lora_tensor(lora_a, "lora_a", x);
  check_lora_tensor(lora_b, "lora_b", x);
  TORCH_CHECK(x.dim() == 2 && x.stride(1) == 1,
              "add_lora: x must be [num_tokens, in_features], contiguous in its last dimension, "
              "got sizes ",
              x.sizes(), " strides ", x.strides());
  const int64_t num_tokens = x.size(0);
  const int64_t in_features = x.size(1);
  TORCH_CHECK(out.dim() == 2 && out.size(0) == num_tokens && out.stride(1) == 1,
              "add_lora: out must be [num_tokens=", num_tokens,
              ", out_features], contiguous in its last dimension, got sizes ", out.sizes(),
              " strides ", out.strides());
  const int64_t out_features = out.size(1);
  TORCH_CHECK(lora_b.dim() == 3 && lora_b.size(2) == out_features && lora_b.is_contiguous(),
              "add_lora: lora_b must be a contiguous [max_loras, max_rank, out_features=",
              out_features, "], got ", lora_b.sizes());
  const int64_t max_loras = lora_b.size(0);
  const int64_t rank = lora_b.size(1);
  const int64_t num_slices = static_cast<int64_t>(output_slices.size());
  TORCH_CHECK(num_slices >= 1, "add_lora: output_slices must name at least one slice");
  TORCH_CHECK(num_slices <= kMaxLoraSlices, "add_lora: at most ", kMaxLoraSlices,
              " output slices on CUDA, got ", num_slices);
  LoraSlices slices{};
  slices.count = static_cast<int>(num_slices);
  int64_t total = 0;
  for (int64_t s = 0; s < num_slices; ++s) {
    TORCH_CHECK(output_slices[s] > 0, "add_lora: every output slice must be positive, got ",
                output_slices);
    total += output_slices[s];
    slices.end[s] = total;
  }
  TORCH_CHECK(total == out_features, "add_lora: output_slices ", output_slices, " sum to ",
              total, ", not out_features=", out_features);
  const int64_t width = num_slices * rank;
  TORCH_CHECK(lora_a.dim() == 3 && lora_a.size(0) == max_loras && lora_a.size(1) == width &&
                  lora_a.size(2) == in_features && lora_a.is_contiguous(),
              "add_lora: lora_a must be a contiguous [max_loras=", max_loras,
              ", num_slices * max_rank=", width, ", in_features=", in_features, "], got ",
              lora_a.sizes());
  const at::Tensor slots_host =
      index_on_host(token_slots, "add_lora", "token_slots", at::kLong, x.device());
  TORCH_CHECK(slots_host.dim() == 1 && slots_host.size(0) == num_tokens,
              "add_lora: token_slots must be [num_tokens=", num_tokens, "], got ",
              token_slots.sizes());
  const int64_t* slots = slots_host.const_data_ptr<int64_t>();
  bool any = false;
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] >= -1 && slots[t] < max_loras, "add_lora: token_slots[", t, "] = ",
                slots[t], " is outside [-1, max_loras=", max_loras, ")");
    any = any || slots[t] >= 0;
  }
  if (!any || rank == 0 || in_features == 0) {
    return;
  }
  const c10::cuda::CUDAGuard guard(x.device());
  const at::Tensor slots_device =
      token_slots.is_cuda() ? token_slots.contiguous()
                            : slots_host.to(x.device(), /*non_blocking=*/true);
  at::Tensor shrunk = at::empty({num_tokens, width}, x.options().dtype(at::kFloat));
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  C10_CUDA_CHECK(launch_add_lora(dtype, out.data_ptr(), out.stride(0), x.const_data_ptr(),
                                 x.stride(0), lora_a.const_data_ptr(), lora_b.const_data_ptr(),
                                 slots_device.const_data_ptr<int64_t>(),
                                 shrunk.data_ptr<float>(), num_tokens, in_features,
                                 out_features, rank, slices, stream));
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) { m.impl("add_lora", &add_lora); }

}  // namespace corral::cuda
