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

  // Fused element-wise ops of the decoder layers (vLLM's names and argument order).
  // Math is float32 whatever the storage dtype.
  // out = input * rsqrt(mean(input^2) + epsilon) * weight, over the last dimension.
  m.def("rms_norm(Tensor(a!) out, Tensor input, Tensor weight, float epsilon) -> ()");
  // residual += input, then input = rms_norm(residual): both in place, one pass.
  m.def(
      "fused_add_rms_norm(Tensor(a!) input, Tensor(b!) residual, Tensor weight, "
      "float epsilon) -> ()");
  // out = silu(input[..., :d]) * input[..., d:].
  m.def("silu_and_mul(Tensor(a!) out, Tensor input) -> ()");
  // out = the tanh approximation of GELU (GPT-2's gelu_new) of input.
  m.def("gelu_tanh(Tensor(a!) out, Tensor input) -> ()");
  // Rotates query and key in place at each token's position; cos_sin_cache is
  // [max_position, rot_dim] holding cos then sin; neox (rotate-half) or GPT-J
  // (interleaved pairs) layout.
  m.def(
      "rotary_embedding(Tensor positions, Tensor(a!) query, Tensor(b!) key, int head_size, "
      "Tensor cos_sin_cache, bool is_neox) -> ()");
  // out[r] = log_softmax(logits[r])[token_ids[r]] without the [rows, vocab] log_softmax.
  m.def("token_logprobs(Tensor(a!) out, Tensor logits, Tensor token_ids) -> ()");
  m.def("greedy_sample(Tensor(a!) token_ids, Tensor(b!) logprobs, Tensor logits) -> ()");
  // Multi-LoRA delta of one linear layer: out[t] += x[t] @ A[s]^T @ B[s] per output slice,
  // with s = token_slots[t] (-1: no adapter). lora_a [max_loras, num_slices * max_rank,
  // in_features], lora_b [max_loras, max_rank, out_features] (scaling folded in).
  m.def(
      "add_lora(Tensor(a!) out, Tensor x, Tensor lora_a, Tensor lora_b, Tensor token_slots, "
      "int[] output_slices) -> ()");
}
