// Schemas of the corral native ops. Each backend (native/cpu, native/cuda)
// registers its kernels for these schemas with TORCH_LIBRARY_IMPL; the contracts
// are written down in DESIGN.md ("Native ops") and in corral/ops/__init__.py.
#include <torch/library.h>

TORCH_LIBRARY(corral, m) {
  // Scatter this step's keys/values into their cache slots; a negative slot is skipped.
  m.def(
      "reshape_and_cache(Tensor key, Tensor value, Tensor(a!) key_cache, "
      "Tensor(b!) value_cache, Tensor slot_mapping) -> ()");
  // Varlen causal attention over the paged cache, for any mix of decode tokens and
  // prefill chunks on top of a cached prefix.
  m.def(
      "paged_attention(Tensor(a!) out, Tensor query, Tensor key_cache, "
      "Tensor value_cache, Tensor query_start_loc, Tensor seq_lens, "
      "Tensor block_tables, float scale, int sliding_window=-1) -> ()");
  // Copy-on-write of whole blocks inside every layer's caches.
  m.def(
      "copy_blocks(Tensor(a!)[] key_caches, Tensor(b!)[] value_caches, "
      "Tensor block_mapping) -> ()");
  // Move whole blocks between two caches (device <-> host, or host <-> host).
  m.def("swap_blocks(Tensor src, Tensor(a!) dst, Tensor block_mapping) -> ()");
}
