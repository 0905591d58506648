// paged_attention for CUDA tensors: validates the call on the host, then runs
// the decode kernel for sequences with one query token and the prefill kernel
// for sequences with more (both in one call when the batch mixes them).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "attention.h"
#include "dispatch.h"
#include "host_index.h"

namespace corral::cuda {
namespace {

// Messages start with the op's name, as the CPU kernel's do, so that one set of
// bad-input tests holds both backends to the same wording.
constexpr const char* kOp = "paged_attention";

void check_16_byte_aligned(const at::Tensor& t, const char* name) {
  TORCH_CHECK(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0, kOp, ": ",
              name, " must start on a 16-byte boundary (kernels read whole "
              "16-byte vectors); got a view at an odd offset");
}

void check_cache(const at::Tensor& cache, const at::Tensor& query,
                 const char* name) {
  TORCH_CHECK(cache.device() == query.device(), kOp, ": ", name,
              " must be on the query's device ", query.device(), ", got ",
              cache.device());
  TORCH_CHECK(cache.scalar_type() == query.scalar_type(), kOp,
              ": query, key_cache and value_cache must share one dtype; ", name, " is ",
              cache.scalar_type(), ", query is ", query.scalar_type());
  TORCH_CHECK(cache.dim() == 4, kOp, ": ", name,
              " must be [num_blocks, block_size, num_kv_heads, head_size], got ",
              cache.sizes());
  TORCH_CHECK(cache.is_contiguous(), kOp, ": ", name, " must be contiguous");
  check_16_byte_aligned(cache, name);
}

// Sizes the kernels' launch grids need, read from the validated host indices.
struct BatchShape {
  bool has_decode = false;
  bool has_prefill = false;
  int max_decode_seq_len = 0;
  int max_prefill_query_len = 0;
};

// Checks query_start_loc, seq_lens and every block-table entry a kernel will
// read: for each sequence, the blocks from the earliest key its first query
// sees up to its last token.
BatchShape validate_indices(const at::Tensor& query_start_loc,
                            const at::Tensor& seq_lens,
                            const at::Tensor& block_tables, int64_t num_tokens,
                            int64_t num_blocks, int64_t block_size,
                            int64_t sliding_window) {
  const int64_t num_seqs = seq_lens.size(0);
  const int64_t max_blocks = block_tables.size(1);
  const int32_t* starts = query_start_loc.data_ptr<int32_t>();
  const int32_t* lens = seq_lens.data_ptr<int32_t>();
  const int32_t* table = block_tables.data_ptr<int32_t>();
  TORCH_CHECK(starts[0] == 0, kOp, ": query_start_loc[0] must be 0, got ",
              starts[0]);
  TORCH_CHECK(starts[num_seqs] == num_tokens, kOp, ": query_start_loc[-1] = ",
              starts[num_seqs], " but num_tokens = ", num_tokens);
  BatchShape shape;
  for (int64_t s = 0; s < num_seqs; ++s) {
    const int64_t q_len = int64_t(starts[s + 1]) - starts[s];
    const int64_t seq_len = lens[s];
    TORCH_CHECK(q_len >= 0, kOp, ": query_start_loc must not decrease (sequence ",
                s, ")");
    TORCH_CHECK(seq_len >= q_len, kOp, ": seq_lens[", s, "] = ", seq_len,
                " is below the sequence's query length ", q_len);
    TORCH_CHECK(seq_len <= max_blocks * block_size, kOp, ": seq_lens[", s, "] = ", seq_len,
                " needs more than the ", max_blocks, " blocks of size ", block_size,
                " a block_tables row holds");
    if (q_len == 0) {
      continue;
    }
    const int64_t first_pos = seq_len - q_len;
    const int64_t first_key =
        sliding_window > 0 ? std::max<int64_t>(0, first_pos - sliding_window + 1) : 0;
    for (int64_t b = first_key / block_size; b <= (seq_len - 1) / block_size; ++b) {
      const int32_t block = table[s * max_blocks + b];
      TORCH_CHECK(block >= 0 && block < num_blocks, kOp, ": block_tables[", s, "][", b,
                  "] = ", block, " is out of range for a cache of ", num_blocks,
                  " blocks");
    }
    if (q_len == 1) {
      shape.has_decode = true;
      shape.max_decode_seq_len = std::max<int>(shape.max_decode_seq_len, seq_len);
    } else {
      shape.has_prefill = true;
      shape.max_prefill_query_len = std::max<int>(shape.max_prefill_query_len, q_len);
    }
  }
  return shape;
}

// The largest divisor of the GQA group size that a decode thread block can
// serve at once.
int decode_heads_per_block(int64_t group_size) {
  for (int64_t n = std::min<int64_t>(group_size, kDecodeMaxHeadsPerBlock); n > 1; --n) {
    if (group_size % n == 0) {
      return static_cast<int>(n);
    }
  }
  return 1;
}

struct Launch {
  const AttentionParams& params;
  const DecodeScratch& scratch;
  const BatchShape& shape;
  cudaStream_t stream;

  template <typename T, int HEAD>
  void operator()() const {
    if (shape.has_decode) {
      // Parenthesised: the template arguments' comma would split the macro call.
      C10_CUDA_CHECK((launch_decode<T, HEAD>(params, scratch, stream)));
    }
    if (shape.has_prefill) {
      C10_CUDA_CHECK((launch_prefill<T, HEAD>(params, shape.max_prefill_query_len, stream)));
    }
  }
};

void paged_attention(at::Tensor& out, const at::Tensor& query,
                     const at::Tensor& key_cache, const at::Tensor& value_cache,
                     const at::Tensor& query_start_loc, const at::Tensor& seq_lens,
                     const at::Tensor& block_tables, double scale,
                     int64_t sliding_window) {
  TORCH_CHECK(query.is_cuda(), kOp, ": query must be a CUDA tensor, got ",
              query.device());
  TORCH_CHECK(query.dim() == 3, kOp,
              ": query must be [num_tokens, num_heads, head_size], got ",
              query.sizes());
  TORCH_CHECK(query.is_contiguous(), kOp, ": query must be contiguous");
  const at::ScalarType dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16, kOp,
              ": query dtype ", dtype, " is not supported (float32, float16, bfloat16)");
  check_16_byte_aligned(query, "query");
  TORCH_CHECK(out.device() == query.device() && out.scalar_type() == dtype, kOp,
              ": out must be on query's device with query's dtype; got ", out.device(),
              " ", out.scalar_type(), " vs ", query.device(), " ", dtype);
  TORCH_CHECK(out.sizes() == query.sizes(), kOp, ": out shape ", out.sizes(),
              " differs from query shape ", query.sizes());
  TORCH_CHECK(out.is_contiguous(), kOp, ": out must be contiguous");
  check_cache(key_cache, query, "key_cache");
  check_cache(value_cache, query, "value_cache");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(), kOp, ": value_cache shape ",
              value_cache.sizes(), " differs from key_cache shape ", key_cache.sizes());

  const int64_t num_tokens = query.size(0);
  const int64_t num_heads = query.size(1);
  const int64_t head_size = query.size(2);
  const int64_t num_blocks = key_cache.size(0);
  const int64_t block_size = key_cache.size(1);
  const int64_t num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == head_size, kOp, ": cache head size ",
              key_cache.size(3), " differs from query head size ", head_size);
  TORCH_CHECK(is_supported_head_size(head_size), kOp, ": head_size must be a multiple of ",
              kHeadSizeMultiple, " up to ", kMaxHeadSize, " on CUDA, got ", head_size);
  TORCH_CHECK(block_size == 8 || block_size == 16 || block_size == 32, kOp,
              ": unsupported block size ", block_size, " (supported: 8, 16, 32)");
  TORCH_CHECK(num_kv_heads > 0 && num_heads % num_kv_heads == 0, kOp,
              ": num_heads ", num_heads, " is not a multiple of num_kv_heads ",
              num_kv_heads);
  TORCH_CHECK(std::isfinite(scale), kOp, ": scale must be finite, got ", scale);
  TORCH_CHECK(sliding_window <= std::numeric_limits<int>::max(), kOp,
              ": sliding_window ", sliding_window, " is too large");
  TORCH_CHECK(num_blocks <= std::numeric_limits<int32_t>::max(), kOp,
              ": too many cache blocks for int32 block tables");

  const at::Device device = query.device();
  check_index(query_start_loc, kOp, "query_start_loc", at::kInt, device);
  check_index(seq_lens, kOp, "seq_lens", at::kInt, device);
  check_index(block_tables, kOp, "block_tables", at::kInt, device);
  const std::vector<at::Tensor> host =
      indices_on_host({query_start_loc, seq_lens, block_tables});
  const at::Tensor& starts_host = host[0];
  const at::Tensor& lens_host = host[1];
  const at::Tensor& table_host = host[2];
  TORCH_CHECK(lens_host.dim() == 1, kOp, ": seq_lens must be 1-D, got ",
              lens_host.sizes());
  const int64_t num_seqs = lens_host.size(0);
  TORCH_CHECK(starts_host.dim() == 1 && starts_host.size(0) == num_seqs + 1, kOp,
              ": query_start_loc must be [num_seqs + 1] = [", num_seqs + 1,
              "], got ", starts_host.sizes());
  TORCH_CHECK(table_host.dim() == 2 && table_host.size(0) == num_seqs, kOp,
              ": block_tables must be [num_seqs, max_blocks] with num_seqs = ",
              num_seqs, ", got ", table_host.sizes());
  TORCH_CHECK(num_seqs <= 65535, kOp, ": at most 65535 sequences per call, got ",
              num_seqs);
  const BatchShape shape =
      validate_indices(starts_host, lens_host, table_host, num_tokens, num_blocks,
                       block_size, sliding_window);
  if (!shape.has_decode && !shape.has_prefill) {
    return;
  }

  const c10::cuda::CUDAGuard guard(device);
  const at::Tensor starts_dev = index_on_device(query_start_loc, device);
  const at::Tensor lens_dev = index_on_device(seq_lens, device);
  const at::Tensor table_dev = index_on_device(block_tables, device);

  AttentionParams params{};
  params.out = out.data_ptr();
  params.query = query.data_ptr();
  params.key_cache = key_cache.data_ptr();
  params.value_cache = value_cache.data_ptr();
  params.query_start_loc = starts_dev.data_ptr<int32_t>();
  params.seq_lens = lens_dev.data_ptr<int32_t>();
  params.block_tables = table_dev.data_ptr<int32_t>();
  params.scale = static_cast<float>(scale);
  params.sliding_window = sliding_window > 0 ? static_cast<int>(sliding_window) : 0;
  params.num_seqs = static_cast<int>(num_seqs);
  params.num_heads = static_cast<int>(num_heads);
  params.num_kv_heads = static_cast<int>(num_kv_heads);
  params.block_size = static_cast<int>(block_size);
  params.max_blocks_per_seq = static_cast<int>(table_host.size(1));

  DecodeScratch scratch{};
  at::Tensor partial_out;
  at::Tensor partial_stats;
  if (shape.has_decode) {
    scratch.heads_per_block = decode_heads_per_block(num_heads / num_kv_heads);
    scratch.num_partitions =
        (shape.max_decode_seq_len + kDecodePartitionSize - 1) / kDecodePartitionSize;
    TORCH_CHECK(scratch.num_partitions <= 65535, kOp, ": a context of ",
                shape.max_decode_seq_len, " tokens is longer than the decode grid allows");
    if (scratch.num_partitions > 1) {
      const auto f32 = query.options().dtype(at::kFloat);
      partial_out =
          at::empty({num_seqs, num_heads, scratch.num_partitions, head_size}, f32);
      partial_stats = at::empty({2, num_seqs, num_heads, scratch.num_partitions}, f32);
      scratch.partial_out = partial_out.data_ptr<float>();
      scratch.partial_max = partial_stats[0].data_ptr<float>();
      scratch.partial_sum = partial_stats[1].data_ptr<float>();
    }
  }

  const cudaStream_t stream = at::cuda::getCurrentCUDAStream(device.index());
  dispatch_dtype_and_head(query.scalar_type(), head_size,
                          Launch{params, scratch, shape, stream});
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CUDA, m) { m.impl("paged_attention", &paged_attention); }

}  // namespace corral::cuda
