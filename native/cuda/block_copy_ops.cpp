// copy_blocks and swap_blocks for CUDA tensors.
//
// copy_blocks (copy-on-write within the device cache of every layer) checks the
// call and makes one kernel launch for all layers and pairs. swap_blocks moves whole blocks between
// a device cache and a host cache, either direction, with one cudaMemcpyAsync
// per run of consecutive blocks. The dispatcher sends a call here as soon as one
// tensor argument is on CUDA, so a host<->device swap always lands here.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <unordered_set>
#include <vector>

#include "cache_kernels.h"
#include "host_index.h"

namespace corral::cuda {
namespace {

// Checks an int64 [n, 2] (src, dst) block mapping against the block counts of
// the two sides and returns it on the host. Destinations must be distinct; with
// `forbid_chains` a destination may not also be a source, because copy_blocks
// copies all pairs at once and the result would depend on the order.
at::Tensor checked_mapping(const at::Tensor& block_mapping, const char* op,
                           const at::Device& device, int64_t src_blocks,
                           int64_t dst_blocks, bool forbid_chains) {
  const at::Tensor mapping =
      index_on_host(block_mapping, op, "block_mapping", at::kLong, device);
  TORCH_CHECK(mapping.dim() == 2 && mapping.size(1) == 2, op,
              ": block_mapping must be [num_pairs, 2] (src, dst), got ",
              mapping.sizes());
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  std::unordered_set<int64_t> sources;
  std::unordered_set<int64_t> destinations;
  for (int64_t i = 0; i < mapping.size(0); ++i) {
    const int64_t src = pairs[2 * i];
    const int64_t dst = pairs[2 * i + 1];
    TORCH_CHECK(src >= 0 && src < src_blocks, op, ": block_mapping[", i, "][0] = ", src,
                " is out of range for a source cache with ", src_blocks, " blocks");
    TORCH_CHECK(dst >= 0 && dst < dst_blocks, op, ": block_mapping[", i, "][1] = ", dst,
                " is out of range for a destination cache with ", dst_blocks, " blocks");
    TORCH_CHECK(destinations.insert(dst).second, op, ": block_mapping writes block ", dst,
                " twice");
    sources.insert(src);
  }
  if (forbid_chains) {
    for (const int64_t dst : destinations) {
      TORCH_CHECK(sources.count(dst) == 0, op, ": block ", dst,
                  " is both a source and a destination in block_mapping");
    }
  }
  return mapping;
}

bool is_cache_dtype(at::ScalarType dtype) {
  return dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16;
}

// Op names lead the messages, as in the CPU kernels'.
constexpr const char* kCopyOp = "copy_blocks";

void copy_blocks(at::TensorList key_caches, at::TensorList value_caches,
                 const at::Tensor& block_mapping) {
  TORCH_CHECK(key_caches.size() == value_caches.size(), kCopyOp, ": ",
              key_caches.size(), " key caches but ", value_caches.size(),
              " value caches");
  if (key_caches.empty()) {
    return;
  }
  const at::Tensor& first = key_caches.front();
  TORCH_CHECK(first.is_cuda(), kCopyOp, ": caches must be CUDA tensors, got ",
              first.device());
  TORCH_CHECK(first.dim() == 4, kCopyOp,
              ": caches must be [num_blocks, block_size, num_kv_heads, head_size], "
              "got ",
              first.sizes());
  TORCH_CHECK(is_cache_dtype(first.scalar_type()), kCopyOp, ": unsupported dtype ",
              first.scalar_type());
  std::vector<const at::Tensor*> caches;
  for (size_t layer = 0; layer < key_caches.size(); ++layer) {
    caches.push_back(&key_caches[layer]);
    caches.push_back(&value_caches[layer]);
  }
  for (const at::Tensor* cache : caches) {
    TORCH_CHECK(cache->device() == first.device() &&
                    cache->scalar_type() == first.scalar_type() &&
                    cache->sizes() == first.sizes(),
                kCopyOp, ": every cache must match the first in device, dtype and "
                "shape; got ",
                cache->device(), " ", cache->scalar_type(), " ", cache->sizes(),
                " vs ", first.device(), " ", first.scalar_type(), " ", first.sizes());
    TORCH_CHECK(cache->is_contiguous(), kCopyOp, ": caches must be contiguous");
  }
  const at::Device device = first.device();
  const int64_t num_blocks = first.size(0);
  const at::Tensor mapping = checked_mapping(block_mapping, kCopyOp, device, num_blocks,
                                             num_blocks, /*forbid_chains=*/true);
  const int64_t num_pairs = mapping.size(0);
  if (num_pairs == 0) {
    return;
  }
  TORCH_CHECK(num_pairs <= std::numeric_limits<int32_t>::max() &&
                  caches.size() <= 65535,
              kCopyOp, ": too many pairs or layers for one launch");

  const int64_t block_bytes = first.stride(0) * first.element_size();
  bool aligned16 = block_bytes % 16 == 0;
  const at::Tensor addresses = at::empty({int64_t(caches.size())}, at::kLong);
  int64_t* address = addresses.data_ptr<int64_t>();
  for (size_t i = 0; i < caches.size(); ++i) {
    address[i] = reinterpret_cast<int64_t>(caches[i]->data_ptr());
    aligned16 = aligned16 && address[i] % 16 == 0;
  }

  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor addresses_dev = addresses.to(device, /*non_blocking=*/true);
  const at::Tensor mapping_dev = index_on_device(block_mapping, device);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device.index());
  C10_CUDA_CHECK(launch_copy_blocks(aligned16 ? 16 : 2, addresses_dev.data_ptr<int64_t>(),
                                    static_cast<int>(caches.size()),
                                    mapping_dev.data_ptr<int64_t>(), num_pairs, block_bytes,
                                    stream));
}

constexpr const char* kSwapOp = "swap_blocks";

// With a pinned host side the copies are asynchronous on the current stream:
// synchronise before reading a host destination or reusing a host source. With
// pageable host memory CUDA completes each copy before returning.
void swap_blocks(const at::Tensor& src, at::Tensor& dst, const at::Tensor& block_mapping) {
  TORCH_CHECK(src.is_cuda() || dst.is_cuda(), kSwapOp,
              ": one of src and dst must be a CUDA tensor (a CPU<->CPU swap "
              "takes block_mapping on the CPU), got ",
              src.device(), " and ", dst.device());
  TORCH_CHECK(!(src.is_cuda() && dst.is_cuda()) || src.device() == dst.device(),
              kSwapOp, ": src and dst are on different CUDA devices ", src.device(),
              " and ", dst.device());
  TORCH_CHECK(src.is_cuda() || src.is_cpu(), kSwapOp, ": src must be CUDA or CPU");
  TORCH_CHECK(dst.is_cuda() || dst.is_cpu(), kSwapOp, ": dst must be CUDA or CPU");
  TORCH_CHECK(src.scalar_type() == dst.scalar_type(), kSwapOp, ": src dtype ",
              src.scalar_type(), " differs from dst dtype ", dst.scalar_type());
  TORCH_CHECK(is_cache_dtype(src.scalar_type()), kSwapOp, ": unsupported dtype ",
              src.scalar_type());
  TORCH_CHECK(src.dim() == 4 && dst.dim() == 4 && src.sizes().slice(1) == dst.sizes().slice(1),
              kSwapOp, ": src and dst must be [num_blocks, block_size, num_kv_heads, "
              "head_size] with equal block shapes, got ",
              src.sizes(), " and ", dst.sizes());
  TORCH_CHECK(src.is_contiguous() && dst.is_contiguous(), kSwapOp,
              ": src and dst must be contiguous");

  const at::Device device = src.is_cuda() ? src.device() : dst.device();
  const at::Tensor mapping = checked_mapping(block_mapping, kSwapOp, device, src.size(0),
                                             dst.size(0), /*forbid_chains=*/false);
  const int64_t num_pairs = mapping.size(0);
  const int64_t* pairs = mapping.data_ptr<int64_t>();
  const cudaMemcpyKind kind = src.is_cuda()
                                  ? (dst.is_cuda() ? cudaMemcpyDeviceToDevice
                                                   : cudaMemcpyDeviceToHost)
                                  : cudaMemcpyHostToDevice;
  const int64_t block_bytes = src.stride(0) * src.element_size();
  const auto* from = static_cast<const char*>(src.data_ptr());
  auto* to = static_cast<char*>(dst.data_ptr());

  const c10::cuda::CUDAGuard guard(device);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device.index());
  // Pairs that continue a run of consecutive blocks on both sides join it, so
  // a contiguous swap is a single large copy.
  int64_t i = 0;
  while (i < num_pairs) {
    int64_t run = 1;
    while (i + run < num_pairs && pairs[2 * (i + run)] == pairs[2 * i] + run &&
           pairs[2 * (i + run) + 1] == pairs[2 * i + 1] + run) {
      ++run;
    }
    C10_CUDA_CHECK(cudaMemcpyAsync(to + pairs[2 * i + 1] * block_bytes,
                                   from + pairs[2 * i] * block_bytes, run * block_bytes,
                                   kind, stream));
    i += run;
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) {
  m.impl("copy_blocks", &copy_blocks);
  m.impl("swap_blocks", &swap_blocks);
}

}  // namespace corral::cuda
