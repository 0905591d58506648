// CPU paged_attention: validates the batch, cuts it into independent tasks and
// runs them on torch's thread pool.
//
// Task planning lives in attention_plan.h, the kernels in attention_*.h.
#include "attention_plan.h"
#include "attention_prefill_amx.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <optional>
#include <type_traits>
#include <vector>

namespace corral {
namespace {

using cpu::Batch;
using cpu::kHeadSizeMultiple;
using cpu::Merge;
using cpu::Plan;
using cpu::Task;

Batch check_inputs(const at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                   const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                   const at::Tensor& seq_lens, const at::Tensor& block_tables) {
  constexpr const char* op = "paged_attention";
  for (const auto* t : {&out, &query, &key_cache, &value_cache, &query_start_loc, &seq_lens,
                        &block_tables}) {
    TORCH_CHECK(t->device().is_cpu(), op, ": every tensor must be on the CPU, got one on ",
                t->device());
  }
  TORCH_CHECK(query.dim() == 3, op, ": query must be [num_tokens, num_heads, head_size], got ",
              query.sizes());
  const auto dtype = query.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf, op,
              ": query dtype must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(key_cache.dim() == 4, op,
              ": key_cache must be [num_blocks, block_size, num_kv_heads, head_size], got ",
              key_cache.sizes());
  TORCH_CHECK(value_cache.sizes() == key_cache.sizes(), op, ": value_cache shape ",
              value_cache.sizes(), " differs from key_cache shape ", key_cache.sizes());
  const auto cache_dtype = key_cache.scalar_type();
  TORCH_CHECK(out.scalar_type() == dtype && value_cache.scalar_type() == cache_dtype &&
                  (cache_dtype == dtype || cache_dtype == at::kFloat8_e4m3fn ||
                   cache_dtype == at::kFloat8_e5m2),
              op,
              ": out and query must share one dtype, and key_cache and value_cache either "
              "that dtype or one float8 dtype, got ",
              out.scalar_type(), ", ", dtype, ", ", key_cache.scalar_type(), ", ",
              value_cache.scalar_type());
  TORCH_CHECK(out.sizes() == query.sizes(), op, ": out shape ", out.sizes(),
              " differs from query shape ", query.sizes());
  for (const auto* t : {&out, &query, &key_cache, &value_cache, &block_tables}) {
    TORCH_CHECK(t->is_contiguous(), op,
                ": out, query, key_cache, value_cache and block_tables must be contiguous");
  }
  Batch b;
  b.num_heads = query.size(1);
  b.head_size = query.size(2);
  b.block_size = key_cache.size(1);
  b.num_kv_heads = key_cache.size(2);
  TORCH_CHECK(key_cache.size(3) == b.head_size, op, ": query head_size ", b.head_size,
              " differs from the cache's ", key_cache.size(3));
  TORCH_CHECK(b.head_size > 0 && b.head_size % kHeadSizeMultiple == 0, op,
              ": head_size must be a positive multiple of ", kHeadSizeMultiple, ", got ",
              b.head_size);
  TORCH_CHECK(b.num_kv_heads > 0 && b.num_heads % b.num_kv_heads == 0, op, ": num_heads ",
              b.num_heads, " is not a multiple of num_kv_heads ", b.num_kv_heads);
  b.group = b.num_heads / b.num_kv_heads;

  for (const auto* t : {&query_start_loc, &seq_lens, &block_tables}) {
    TORCH_CHECK(t->scalar_type() == at::kInt, op,
                ": query_start_loc, seq_lens and block_tables must be int32, got ",
                t->scalar_type());
  }
  TORCH_CHECK(seq_lens.dim() == 1, op, ": seq_lens must be 1-D, got ", seq_lens.sizes());
  b.num_seqs = seq_lens.size(0);
  TORCH_CHECK(query_start_loc.dim() == 1 && query_start_loc.size(0) == b.num_seqs + 1, op,
              ": query_start_loc must have shape [num_seqs + 1] = [", b.num_seqs + 1,
              "], got ", query_start_loc.sizes());
  TORCH_CHECK(block_tables.dim() == 2 && block_tables.size(0) == b.num_seqs, op,
              ": block_tables must have shape [num_seqs = ", b.num_seqs, ", max_blocks], got ",
              block_tables.sizes());
  b.max_blocks = block_tables.size(1);
  TORCH_CHECK(query_start_loc.is_contiguous() && seq_lens.is_contiguous(), op,
              ": query_start_loc and seq_lens must be contiguous");
  b.query_start = query_start_loc.data_ptr<int32_t>();
  b.seq_lens = seq_lens.data_ptr<int32_t>();
  b.block_tables = block_tables.data_ptr<int32_t>();

  const int64_t num_blocks = key_cache.size(0);
  TORCH_CHECK(b.query_start[0] == 0, op, ": query_start_loc[0] must be 0, got ",
              b.query_start[0]);
  TORCH_CHECK(b.query_start[b.num_seqs] == query.size(0), op, ": query_start_loc[-1] = ",
              b.query_start[b.num_seqs], " differs from num_tokens ", query.size(0));
  for (int64_t s = 0; s < b.num_seqs; ++s) {
    const int64_t q_len = b.query_start[s + 1] - b.query_start[s];
    const int64_t ctx = b.seq_lens[s];
    TORCH_CHECK(q_len >= 0, op, ": query_start_loc must be non-decreasing, but entry ", s + 1,
                " is below entry ", s);
    TORCH_CHECK(ctx >= q_len, op, ": seq_lens[", s, "] = ", ctx,
                " is below the sequence's query length ", q_len);
    TORCH_CHECK(ctx <= b.max_blocks * b.block_size, op, ": seq_lens[", s, "] = ", ctx,
                " needs more than the ", b.max_blocks, " blocks of size ", b.block_size,
                " a block_tables row holds");
    const int32_t* row = b.block_tables + s * b.max_blocks;
    for (int64_t i = 0; i < (ctx + b.block_size - 1) / b.block_size; ++i) {
      TORCH_CHECK(row[i] >= 0 && row[i] < num_blocks, op, ": block_tables[", s, "][", i,
                  "] = ", row[i], " is out of range for a cache with ", num_blocks, " blocks");
    }
  }
  return b;
}

template <typename T, typename KV>
void run(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
         const at::Tensor& value_cache, const Batch& b, double scale, int64_t window) {
  const int64_t num_threads = at::get_num_threads();
  const Plan plan = cpu::make_plan(b, window, num_threads);
  const int64_t hs = b.head_size;
  const int64_t g = b.group;
  const int64_t token_stride = b.num_heads * hs;
  // Partial states of split decode tasks, `drows` query rows per partition.
  const int64_t drows = plan.decode_heads * g;
  std::vector<float> partial_acc(plan.num_partitions * drows * hs);
  std::vector<float> partial_max(plan.num_partitions * drows);
  std::vector<float> partial_sum(plan.num_partitions * drows);
  const T* q_base = query.data_ptr<T>();
  T* out_base = out.data_ptr<T>();
  const auto view_of = [&](const Task& t) {
    return cpu::PagedView<KV>{key_cache.data_ptr<KV>(),
                              value_cache.data_ptr<KV>(),
                              b.block_tables + t.seq * b.max_blocks,
                              b.block_size,
                              b.num_kv_heads * hs,
                              t.kv_head * hs,
                              hs};
  };
  const int64_t tile_rows = plan.tile_tokens * g;
  const int64_t scratch_floats =
      std::max(cpu::PrefillScratch::floats_needed(tile_rows, hs),
               drows * (2 * hs + cpu::kDecodeChunk + 2));
  const int64_t num_tasks = static_cast<int64_t>(plan.tasks.size());
  std::atomic<int64_t> next{0};

  // bfloat16 prefill tiles go to AMX where the CPU has it (attention_prefill_amx.h).
  bool use_amx = false;
  // (With a float8 cache too: its values widen to bfloat16 exactly while packing.)
  constexpr bool bfloat16 = std::is_same_v<T, at::BFloat16> &&
                            (std::is_same_v<KV, at::BFloat16> || cpu::is_float8_v<KV>);
  if constexpr (bfloat16) {
    use_amx = cpu::amx_bf16_available();
  }

  at::parallel_for(0, num_threads, 1, [&](int64_t, int64_t) {
    std::vector<float> scratch(scratch_floats);
    std::optional<cpu::AmxPrefillScratch> amx;
    for (int64_t i = next++; i < num_tasks; i = next++) {
      const Task& t = plan.tasks[i];
      const auto view = view_of(t);
      const int64_t q_len = b.query_start[t.seq + 1] - b.query_start[t.seq];
      const int64_t head0 = b.query_start[t.seq] * token_stride + t.kv_head * g * hs;
      if (q_len > 1) {
        // A prefill tile: the AMX kernel on raw bfloat16 query rows, else the sgemm
        // kernel on scaled float32 ones; both leave an unnormalised output and sums.
        const int64_t num_tokens = t.last - t.first;
        const int64_t first_pos = b.seq_lens[t.seq] - q_len + t.first;
        const float* acc = nullptr;
        const float* sum = nullptr;
        bool done = false;
        if constexpr (bfloat16) {
          if (use_amx) {
            if (!amx) {
              amx.emplace(tile_rows, hs);
            }
            for (int64_t k = 0; k < num_tokens; ++k) {
              std::copy_n(q_base + head0 + (t.first + k) * token_stride, g * hs,
                          amx->q.data() + k * g * hs);
            }
            cpu::prefill_attend_amx(view, g, num_tokens, first_pos, window,
                                    static_cast<float>(scale), *amx);
            acc = amx->acc.data();
            sum = amx->sum.data();
            done = true;
          }
        }
        if (!done) {
          auto s = cpu::PrefillScratch::carve(scratch.data(), tile_rows, hs);
          for (int64_t k = 0; k < num_tokens; ++k) {
            cpu::convert_row(s.q + k * g * hs, q_base + head0 + (t.first + k) * token_stride,
                             g * hs, static_cast<float>(scale));
          }
          cpu::prefill_attend(view, g, num_tokens, first_pos, window, s);
          acc = s.state.acc;
          sum = s.state.sum;
        }
        for (int64_t r = 0; r < num_tokens * g; ++r) {
          T* dst = out_base + head0 + (t.first + r / g) * token_stride + (r % g) * hs;
          cpu::store_row(dst, acc + r * hs, hs, 1.0f / sum[r]);
        }
        continue;
      }
      const int64_t rows = t.num_kv_heads * g;
      float* qf = scratch.data();
      float* scores = qf + rows * hs;
      cpu::convert_row(qf, q_base + head0, rows * hs, static_cast<float>(scale));
      if constexpr (cpu::kDecodeQueryInChunkOrder<T, KV>) {
        cpu::to_chunk_order(qf, rows, hs);
      }
      const cpu::QueryRows<T> q{qf, q_base + head0, static_cast<float>(scale)};
      if (t.partition < 0) {
        float* after = scores + rows * cpu::kDecodeChunk;
        cpu::PartialState st{after, after + rows, after + 2 * rows};
        cpu::decode_attend(view, t.num_kv_heads, g, q, t.first, t.last, scores, st);
        for (int64_t r = 0; r < rows; ++r) {
          cpu::store_row(out_base + head0 + r * hs, st.acc + r * hs, hs, 1.0f / st.sum[r]);
        }
      } else {
        cpu::PartialState st{partial_max.data() + t.partition * drows,
                             partial_sum.data() + t.partition * drows,
                             partial_acc.data() + t.partition * drows * hs};
        cpu::decode_attend(view, t.num_kv_heads, g, q, t.first, t.last, scores, st);
      }
    }
    if (amx) {
      // Hands the AMX tile configuration back (the microkernel keeps it per thread).
      at::native::cpublas::brgemm_release();
    }
  });

  // Merge split decode tasks: rescale each partition to the common max.
  at::parallel_for(0, static_cast<int64_t>(plan.merges.size()), 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> row(hs);
    for (int64_t m = lo; m < hi; ++m) {
      const Merge& mg = plan.merges[m];
      const int64_t head0 = b.query_start[mg.seq] * token_stride + mg.kv_head * g * hs;
      const int64_t p0 = mg.first_partition;
      for (int64_t r = 0; r < mg.num_kv_heads * g; ++r) {
        float top = cpu::kNegInf;
        for (int64_t p = p0; p < p0 + mg.num_partitions; ++p) {
          top = std::max(top, partial_max[p * drows + r]);
        }
        float total = 0.0f;
        std::fill(row.begin(), row.end(), 0.0f);
        for (int64_t p = p0; p < p0 + mg.num_partitions; ++p) {
          const float w = std::exp(partial_max[p * drows + r] - top);
          total += w * partial_sum[p * drows + r];
          cpu::axpy_row(row.data(), w, partial_acc.data() + (p * drows + r) * hs, hs);
        }
        cpu::store_row(out_base + head0 + r * hs, row.data(), hs, 1.0f / total);
      }
    }
  });
}

void paged_attention(at::Tensor& out, const at::Tensor& query, const at::Tensor& key_cache,
                     const at::Tensor& value_cache, const at::Tensor& query_start_loc,
                     const at::Tensor& seq_lens, const at::Tensor& block_tables, double scale,
                     int64_t sliding_window) {
  const Batch b = check_inputs(out, query, key_cache, value_cache, query_start_loc, seq_lens,
                               block_tables);
  const auto with_query = [&](auto query_tag) {
    using T = decltype(query_tag);
    switch (key_cache.scalar_type()) {
      case at::kFloat8_e4m3fn:
        run<T, c10::Float8_e4m3fn>(out, query, key_cache, value_cache, b, scale, sliding_window);
        break;
      case at::kFloat8_e5m2:
        run<T, c10::Float8_e5m2>(out, query, key_cache, value_cache, b, scale, sliding_window);
        break;
      default:
        run<T, T>(out, query, key_cache, value_cache, b, scale, sliding_window);
    }
  };
  switch (query.scalar_type()) {
    case at::kFloat:
      with_query(float{});
      break;
    case at::kBFloat16:
      with_query(at::BFloat16{});
      break;
    case at::kHalf:
      with_query(at::Half{});
      break;
    default:
      TORCH_CHECK(false, "paged_attention: unsupported dtype ", query.scalar_type());
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CPU, m) {
  m.impl("paged_attention", &paged_attention);
}

}  // namespace corral
