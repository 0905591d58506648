// How paged_attention cuts a batch into tasks for the CPU thread pool.
//
// A prefill task is one kv head of one sequence and a tile of its query tokens. A
// decode task (q_len 1) is a run of kv heads of one sequence (all of them when the
// batch is large, since the kernel then streams whole cache slots) over a range of
// key positions. When a batch has fewer tasks than twice the threads, the keys of
// decode tasks are split into partitions whose partial softmax states are merged
// afterwards (split-K, flash-decoding), and where contexts are too short for that,
// tasks are narrowed to fewer kv heads. Since the split depends on the batch, a
// sequence's decode output can differ in the last bits between batches.
// Prefill tasks are ordered largest first, so that uneven causal tiles balance
// across threads that take tasks from a shared counter.
#pragma once

#include "attention_prefill.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace corral::cpu {

struct Task {
  int64_t seq;
  int64_t kv_head;       // first kv head
  int64_t num_kv_heads;  // decode: kv heads in this task; prefill: 1
  int64_t first;      // decode: first key position; prefill: first query token (local)
  int64_t last;       // exclusive
  int64_t partition;  // index into the partial-state buffer, or -1: write `out` directly
};

struct Batch {
  int64_t num_seqs, num_heads, num_kv_heads, head_size, block_size, max_blocks, group;
  const int32_t* query_start;
  const int32_t* seq_lens;
  const int32_t* block_tables;
};

// Below this many keys a decode partition costs more to merge than it saves.
constexpr int64_t kMinPartition = 256;

// One decode task whose key range was split into partitions.
struct Merge {
  int64_t seq, kv_head, num_kv_heads, first_partition, num_partitions;
};

struct Plan {
  std::vector<Task> tasks;
  std::vector<Merge> merges;
  int64_t num_partitions = 0;
  int64_t tile_tokens = 1;
  int64_t decode_heads = 1;  // most kv heads in one decode task
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

inline Plan make_plan(const Batch& b, int64_t window, int64_t num_threads) {
  Plan plan;
  plan.tile_tokens = std::max<int64_t>(1, kPrefillTileRows / b.group);
  std::vector<int64_t> decode_seqs;
  for (int64_t s = 0; s < b.num_seqs; ++s) {
    const int64_t q_len = b.query_start[s + 1] - b.query_start[s];
    if (q_len == 1) {
      decode_seqs.push_back(s);
      continue;
    }
    for (int64_t h = 0; q_len > 1 && h < b.num_kv_heads; ++h) {
      for (int64_t t0 = 0; t0 < q_len; t0 += plan.tile_tokens) {
        plan.tasks.push_back({s, h, 1, t0, std::min(q_len, t0 + plan.tile_tokens), -1});
      }
    }
  }
  // Prefill tiles later in a sequence see more keys: hand those out first.
  std::stable_sort(plan.tasks.begin(), plan.tasks.end(), [&](const Task& x, const Task& y) {
    const int64_t xs = b.seq_lens[x.seq] - (b.query_start[x.seq + 1] - b.query_start[x.seq]);
    const int64_t ys = b.seq_lens[y.seq] - (b.query_start[y.seq + 1] - b.query_start[y.seq]);
    return xs + x.last > ys + y.last;
  });
  if (decode_seqs.empty()) {
    return plan;
  }
  // Enough tasks to keep every thread busy while the last ones finish.
  const int64_t wanted = 2 * num_threads;
  const int64_t other = static_cast<int64_t>(plan.tasks.size());
  const int64_t num_decode = static_cast<int64_t>(decode_seqs.size());
  const int64_t short_by = ceil_div(std::max<int64_t>(0, wanted - other), num_decode);
  // Split keys first: a task over all kv heads streams whole slots, while a task
  // over some heads reads strided pieces of them. Heads are split only when the
  // contexts are too short to partition.
  int64_t longest = 0;
  for (const int64_t s : decode_seqs) {
    longest = std::max<int64_t>(longest, b.seq_lens[s]);
  }
  const int64_t parts_wanted = std::max<int64_t>(1, short_by);
  const int64_t max_parts = std::max<int64_t>(1, longest / kMinPartition);
  const int64_t head_splits =
      std::min(b.num_kv_heads, ceil_div(parts_wanted, std::min(parts_wanted, max_parts)));
  plan.decode_heads = ceil_div(b.num_kv_heads, head_splits);
  for (const int64_t s : decode_seqs) {
    const int64_t ctx = b.seq_lens[s];
    // The token sits at ctx - 1 and sees keys j > ctx - 1 - window.
    const int64_t begin = window > 0 ? std::max<int64_t>(0, ctx - window) : 0;
    const int64_t len = ctx - begin;
    const int64_t parts = std::clamp<int64_t>(len / kMinPartition, 1, parts_wanted);
    for (int64_t h = 0; h < b.num_kv_heads; h += plan.decode_heads) {
      const int64_t nh = std::min(plan.decode_heads, b.num_kv_heads - h);
      if (parts == 1) {
        plan.tasks.push_back({s, h, nh, begin, ctx, -1});
        continue;
      }
      plan.merges.push_back({s, h, nh, plan.num_partitions, parts});
      for (int64_t p = 0; p < parts; ++p) {
        plan.tasks.push_back({s, h, nh, begin + len * p / parts, begin + len * (p + 1) / parts,
                              plan.num_partitions++});
      }
    }
  }
  return plan;
}

}  // namespace corral::cpu
