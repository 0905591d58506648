// CPU kernels of the cache ops: reshape_and_cache, copy_blocks, swap_blocks.
// All three move whole rows or whole blocks with memcpy (reshape_and_cache converts
// rows instead when the cache is float8); every index is checked before any byte
// moves, so a bad slot or block id fails without side effects.
#include "vec_math.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <type_traits>
#include <unordered_set>
#include <vector>

namespace corral {
namespace {

void check_cpu(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
}

void check_cache(const at::Tensor& cache, const char* op, const char* name) {
  check_cpu(cache, op, name);
  TORCH_CHECK(cache.dim() == 4, op, ": ", name,
              " must be [num_blocks, block_size, num_kv_heads, head_size], got shape ",
              cache.sizes());
  TORCH_CHECK(cache.is_contiguous(), op, ": ", name, " must be contiguous");
}

// Reads an int64 [n, 2] mapping and checks every id against the block counts.
std::vector<std::pair<int64_t, int64_t>> read_block_mapping(const at::Tensor& mapping,
                                                            int64_t num_src_blocks,
                                                            int64_t num_dst_blocks,
                                                            const char* op) {
  check_cpu(mapping, op, "block_mapping");
  TORCH_CHECK(mapping.scalar_type() == at::kLong, op, ": block_mapping must be int64, got ",
              mapping.scalar_type());
  TORCH_CHECK(mapping.dim() == 2 && mapping.size(1) == 2, op,
              ": block_mapping must have shape [n, 2], got ", mapping.sizes());
  auto acc = mapping.accessor<int64_t, 2>();
  std::vector<std::pair<int64_t, int64_t>> pairs;
  pairs.reserve(mapping.size(0));
  std::unordered_set<int64_t> dsts;
  for (int64_t i = 0; i < mapping.size(0); ++i) {
    const int64_t src = acc[i][0];
    const int64_t dst = acc[i][1];
    TORCH_CHECK(src >= 0 && src < num_src_blocks, op, ": block_mapping[", i, "][0] = ", src,
                " is out of range for a source cache with ", num_src_blocks, " blocks");
    TORCH_CHECK(dst >= 0 && dst < num_dst_blocks, op, ": block_mapping[", i, "][1] = ", dst,
                " is out of range for a destination cache with ", num_dst_blocks, " blocks");
    // Two writes to one block would make the result depend on the copy order.
    TORCH_CHECK(dsts.insert(dst).second, op, ": block_mapping writes block ", dst, " twice");
    pairs.emplace_back(src, dst);
  }
  return pairs;
}

// reshape_and_cache into float8 caches: each element rounded and saturated.
template <typename T, typename KV>
void write_float8_rows_as(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                          at::Tensor& value_cache, const int64_t* slots) {
  const int64_t num_tokens = key.size(0);
  const int64_t num_heads = key.size(1);
  const int64_t hs = key.size(2);
  KV* kc = key_cache.data_ptr<KV>();
  KV* vc = value_cache.data_ptr<KV>();
  const T* k = key.const_data_ptr<T>();
  const T* v = value.const_data_ptr<T>();
  at::parallel_for(0, num_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) {
        continue;
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        const int64_t dst = (slots[t] * num_heads + h) * hs;
        const T* ks = k + t * key.stride(0) + h * key.stride(1);
        const T* vs = v + t * value.stride(0) + h * value.stride(1);
        int64_t d = 0;
#if defined(CPU_CAPABILITY_AVX512)
        if constexpr (!std::is_same_v<T, double>) {
          for (; d + cpu::kVec <= hs; d += cpu::kVec) {
            cpu::store_to_cache(kc + dst + d, cpu::load_f32(ks + d));
            cpu::store_to_cache(vc + dst + d, cpu::load_f32(vs + d));
          }
        }
#endif
        for (; d < hs; ++d) {
          kc[dst + d] = cpu::to_cache<KV>(static_cast<float>(ks[d]));
          vc[dst + d] = cpu::to_cache<KV>(static_cast<float>(vs[d]));
        }
      }
    }
  });
}

void write_float8_rows(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const int64_t* slots) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, key.scalar_type(), "reshape_and_cache",
                                  [&] {
                                    if (key_cache.scalar_type() == at::kFloat8_e4m3fn) {
                                      write_float8_rows_as<scalar_t, c10::Float8_e4m3fn>(
                                          key, value, key_cache, value_cache, slots);
                                    } else {
                                      write_float8_rows_as<scalar_t, c10::Float8_e5m2>(
                                          key, value, key_cache, value_cache, slots);
                                    }
                                  });
}

void reshape_and_cache(const at::Tensor& key, const at::Tensor& value, at::Tensor& key_cache,
                       at::Tensor& value_cache, const at::Tensor& slot_mapping) {
  constexpr const char* op = "reshape_and_cache";
  check_cpu(key, op, "key");
  check_cpu(value, op, "value");
  check_cpu(slot_mapping, op, "slot_mapping");
  check_cache(key_cache, op, "key_cache");
  check_cache(value_cache, op, "value_cache");
  TORCH_CHECK(key.dim() == 3, op, ": key must be [num_tokens, num_kv_heads, head_size], got ",
              key.sizes());
  TORCH_CHECK(value.sizes() == key.sizes(), op, ": value shape ", value.sizes(),
              " differs from key shape ", key.sizes());
  TORCH_CHECK(key.stride(2) == 1 && value.stride(2) == 1, op,
              ": key and value must be contiguous in their last (head_size) dimension");
  TORCH_CHECK(key_cache.sizes() == value_cache.sizes(), op, ": key_cache shape ",
              key_cache.sizes(), " differs from value_cache shape ", value_cache.sizes());
  TORCH_CHECK(key.size(1) == key_cache.size(2) && key.size(2) == key_cache.size(3), op,
              ": key is [num_tokens, ", key.size(1), ", ", key.size(2), "] but the cache holds ",
              key_cache.size(2), " kv heads of size ", key_cache.size(3));
  const auto cache_dtype = key_cache.scalar_type();
  const bool float8 = cache_dtype == at::kFloat8_e4m3fn || cache_dtype == at::kFloat8_e5m2;
  TORCH_CHECK(value.scalar_type() == key.scalar_type() &&
                  value_cache.scalar_type() == cache_dtype &&
                  (key.scalar_type() == cache_dtype ||
                   (float8 && (key.scalar_type() == at::kFloat ||
                               key.scalar_type() == at::kBFloat16 ||
                               key.scalar_type() == at::kHalf))),
              op,
              ": key and value must share the caches' dtype (or be float32, bfloat16 or "
              "float16 with float8 caches), got ",
              key.scalar_type(), ", ", value.scalar_type(), ", ", key_cache.scalar_type(), ", ",
              value_cache.scalar_type());
  TORCH_CHECK(slot_mapping.scalar_type() == at::kLong, op, ": slot_mapping must be int64, got ",
              slot_mapping.scalar_type());
  TORCH_CHECK(slot_mapping.dim() == 1 && slot_mapping.size(0) == key.size(0), op,
              ": slot_mapping must have shape [num_tokens] = [", key.size(0), "], got ",
              slot_mapping.sizes());

  const int64_t num_tokens = key.size(0);
  const int64_t num_heads = key.size(1);
  const int64_t num_slots = key_cache.size(0) * key_cache.size(1);
  const at::Tensor slots_c = slot_mapping.contiguous();
  const int64_t* slots = slots_c.data_ptr<int64_t>();
  for (int64_t t = 0; t < num_tokens; ++t) {
    TORCH_CHECK(slots[t] < num_slots, op, ": slot_mapping[", t, "] = ", slots[t],
                " is out of range for a cache with ", num_slots, " slots");
  }

  if (float8) {
    write_float8_rows(key, value, key_cache, value_cache, slots);
    return;
  }
  const int64_t row_bytes = key.size(2) * key.element_size();
  const int64_t slot_stride = num_heads * key.size(2);
  auto* kc = static_cast<char*>(key_cache.data_ptr());
  auto* vc = static_cast<char*>(value_cache.data_ptr());
  const auto* k = static_cast<const char*>(key.data_ptr());
  const auto* v = static_cast<const char*>(value.data_ptr());
  const int64_t esize = key.element_size();
  at::parallel_for(0, num_tokens, 64, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      if (slots[t] < 0) {
        continue;
      }
      for (int64_t h = 0; h < num_heads; ++h) {
        const int64_t dst = (slots[t] * slot_stride + h * key.size(2)) * esize;
        std::memcpy(kc + dst, k + (t * key.stride(0) + h * key.stride(1)) * esize, row_bytes);
        std::memcpy(vc + dst, v + (t * value.stride(0) + h * value.stride(1)) * esize,
                    row_bytes);
      }
    }
  });
}

void copy_blocks(at::TensorList key_caches, at::TensorList value_caches,
                 const at::Tensor& block_mapping) {
  constexpr const char* op = "copy_blocks";
  TORCH_CHECK(key_caches.size() == value_caches.size(), op, ": got ", key_caches.size(),
              " key caches but ", value_caches.size(), " value caches");
  std::vector<at::Tensor> caches;
  for (size_t i = 0; i < key_caches.size(); ++i) {
    caches.push_back(key_caches[i]);
    caches.push_back(value_caches[i]);
  }
  int64_t num_blocks = caches.empty() ? 0 : caches[0].size(0);
  for (const auto& cache : caches) {
    check_cache(cache, op, "every cache");
    num_blocks = std::min(num_blocks, cache.size(0));
  }
  const auto pairs = read_block_mapping(block_mapping, num_blocks, num_blocks, op);
  std::unordered_set<int64_t> dsts;
  for (const auto& pair : pairs) {
    dsts.insert(pair.second);
  }
  for (const auto& pair : pairs) {
    // A block that is both read and written would make the copy order observable.
    TORCH_CHECK(dsts.count(pair.first) == 0, op, ": block ", pair.first,
                " is both a source and a destination");
  }
  const int64_t num_pairs = static_cast<int64_t>(pairs.size());
  at::parallel_for(0, static_cast<int64_t>(caches.size()) * num_pairs, 16,
                   [&](int64_t begin, int64_t end) {
                     for (int64_t i = begin; i < end; ++i) {
                       const at::Tensor& cache = caches[i / num_pairs];
                       const auto& [src, dst] = pairs[i % num_pairs];
                       const int64_t block_bytes = cache.stride(0) * cache.element_size();
                       auto* base = static_cast<char*>(cache.data_ptr());
                       std::memcpy(base + dst * block_bytes, base + src * block_bytes,
                                   block_bytes);
                     }
                   });
}

void swap_blocks(const at::Tensor& src, at::Tensor& dst, const at::Tensor& block_mapping) {
  constexpr const char* op = "swap_blocks";
  check_cache(src, op, "src");
  check_cache(dst, op, "dst");
  TORCH_CHECK(src.scalar_type() == dst.scalar_type(), op, ": src dtype ", src.scalar_type(),
              " differs from dst dtype ", dst.scalar_type());
  TORCH_CHECK(src.sizes().slice(1) == dst.sizes().slice(1), op, ": src block shape ",
              src.sizes().slice(1), " differs from dst block shape ", dst.sizes().slice(1));
  const auto pairs = read_block_mapping(block_mapping, src.size(0), dst.size(0), op);
  const int64_t block_bytes = src.stride(0) * src.element_size();
  const auto* s = static_cast<const char*>(src.data_ptr());
  auto* d = static_cast<char*>(dst.data_ptr());
  at::parallel_for(0, static_cast<int64_t>(pairs.size()), 16, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(d + pairs[i].second * block_bytes, s + pairs[i].first * block_bytes,
                  block_bytes);
    }
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(corral, CPU, m) {
  m.impl("reshape_and_cache", &reshape_and_cache);
  m.impl("copy_blocks", &copy_blocks);
  m.impl("swap_blocks", &swap_blocks);
}

}  // namespace corral
