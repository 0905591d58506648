// Index tensors (slots, block tables, block mappings) are validated on the host
// before a kernel may trust them. They may live on the CPU, which costs nothing,
// or on the CUDA device, which costs one small device-to-host copy and a stream
// synchronisation per call: callers on a hot path should pass them on the CPU.
#pragma once

#include <ATen/ATen.h>

#include <vector>


namespace corral::cuda {

// The names users know the index dtypes by.
inline const char* index_dtype_name(at::ScalarType dtype) {
  switch (dtype) {
    case at::kInt:
      return "int32";
    case at::kLong:
      return "int64";
    default:
      return c10::toString(dtype);
  }
}

// Checks the placement and type of an index tensor.
inline void check_index(const at::Tensor& index, const char* op, const char* name,
                        at::ScalarType dtype, const at::Device& device) {
  TORCH_CHECK(index.scalar_type() == dtype, op, ": ", name, " must be ",
              index_dtype_name(dtype), ", got ", index_dtype_name(index.scalar_type()));
  TORCH_CHECK(index.device().is_cpu() || index.device() == device, op, ": ", name,
              " must be on the CPU or on ", device, ", got ", index.device());
}

// Checks an index tensor and returns a contiguous CPU copy of it to validate.
inline at::Tensor index_on_host(const at::Tensor& index, const char* op,
                                const char* name, at::ScalarType dtype,
                                const at::Device& device) {
  check_index(index, op, name, dtype, device);
  return index.to(at::kCPU).contiguous();
}

// Contiguous CPU copies of several checked index tensors of one dtype. Those on
// the device come back in a single copy, since each copy is a synchronisation.
inline std::vector<at::Tensor> indices_on_host(const std::vector<at::Tensor>& indices) {
  std::vector<at::Tensor> on_device;
  for (const at::Tensor& index : indices) {
    if (!index.device().is_cpu()) {
      on_device.push_back(index.reshape({-1}));
    }
  }
  const at::Tensor fetched =
      on_device.empty() ? at::Tensor() : at::cat(on_device).to(at::kCPU);
  std::vector<at::Tensor> host;
  int64_t offset = 0;
  for (const at::Tensor& index : indices) {
    if (index.device().is_cpu()) {
      host.push_back(index.contiguous());
    } else {
      host.push_back(fetched.narrow(0, offset, index.numel()).view(index.sizes()));
      offset += index.numel();
    }
  }
  return host;
}

// The same index on the kernel's device, uploaded when the caller passed it on
// the CPU. The CPU copy stays alive until the copy ran: a pageable source is
// staged before to() returns, a pinned one is recorded by torch's host allocator.
inline at::Tensor index_on_device(const at::Tensor& index,
                                  const at::Device& device) {
  if (index.device() == device && index.is_contiguous()) {
    return index;
  }
  return index.to(device, /*non_blocking=*/true).contiguous();
}

}  // namespace corral::cuda
