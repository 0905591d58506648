"""Engine configuration: the user-facing `EngineArgs` and the core's resolved `CoreConfig`.

`EngineArgs` mirrors vLLM's argument names. Values that depend on the model (its
context length, how many KV blocks fit in memory) are resolved by the model layer,
which then calls `EngineArgs.core_config` to get the `CoreConfig` the scheduler runs on.
"""

from __future__ import annotations

from typing import Literal

import attrs

from corral.errors import NotSupportedError

PreemptionMode = Literal["recompute", "swap"]

_DTYPES = ("auto", "half", "float16", "bfloat16", "float", "float32")
_KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3", "fp8_e5m2")
_DEVICES = ("auto", "cpu", "cuda")
_LOAD_FORMATS = ("auto", "safetensors", "pt", "dummy")
_EXECUTOR_BACKENDS = ("ray", "mp")
_PREEMPTION_MODES = ("recompute", "swap")

DEFAULT_CHUNKED_BATCHED_TOKENS = 2048
"""Token budget per step with chunked prefill, when none is given."""


def _bad(field: str, allowed: str, value: object) -> ValueError:
    return ValueError(f"{field} must be {allowed}, got {value!r}")


def _positive(field: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise _bad(field, "a positive integer", value)


def _one_of(field: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise _bad(field, "one of " + ", ".join(repr(a) for a in allowed), value)


@attrs.frozen(kw_only=True)
class CoreConfig:
    """What the engine core needs to schedule, fully resolved and validated.

    Attributes:
        block_size: Tokens per KV block.
        num_kv_blocks: Blocks in the device KV cache.
        num_host_blocks: Blocks in the host (swap) cache; 0 disables swapping, and
            swap preemption then falls back to recompute.
        max_model_len: Longest sequence (prompt plus output) the model accepts. A
            sequence stops with finish_reason "length" once it exceeds it, so at most
            ``max_model_len`` tokens ever sit in the cache.
        max_num_seqs: Most sequences running at once (each sample of a best_of
            request counts).
        max_num_batched_tokens: Token budget per step.
        enable_chunked_prefill: Split prompts over steps to fit the budget. Without it a
            prompt is computed in one step, so the budget must cover max_model_len.
        enable_prefix_caching: Reuse the KV of full blocks whose token prefix matches.
        preemption_mode: What happens to a sequence evicted for lack of blocks:
            "recompute" (free its blocks, compute its tokens again later) or "swap"
            (copy its blocks to the host cache and back).
        watermark: Fraction of device blocks kept free when admitting work, so that a
            fresh admission does not force a preemption on the next step.
        vocab_size: The model's vocabulary; token ids a request names (logit_bias,
            allowed_token_ids, bad words) must lie below it. None skips that check
            (a core without a model, e.g. `corral.testing`'s).
        max_loras: Most distinct LoRA adapters among the running sequences; 0 when
            LoRA is off (a request naming an adapter is refused).
    """

    block_size: int = 16
    num_kv_blocks: int
    num_host_blocks: int = 0
    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    preemption_mode: PreemptionMode = "recompute"
    watermark: float = 0.01
    vocab_size: int | None = None
    max_loras: int = 0

    def __attrs_post_init__(self) -> None:
        _positive("block_size", self.block_size)
        if self.max_loras < 0:
            raise _bad("max_loras", "non-negative", self.max_loras)
        _positive("num_kv_blocks", self.num_kv_blocks)
        if self.num_host_blocks < 0:
            raise _bad("num_host_blocks", "non-negative", self.num_host_blocks)
        _positive("max_model_len", self.max_model_len)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _one_of("preemption_mode", self.preemption_mode, _PREEMPTION_MODES)
        if not 0.0 <= self.watermark < 1.0:
            raise _bad("watermark", "in [0, 1)", self.watermark)
        if self.vocab_size is not None:
            _positive("vocab_size", self.vocab_size)
        if self.max_num_batched_tokens < self.max_num_seqs:
            raise _bad(
                "max_num_batched_tokens",
                f"at least max_num_seqs={self.max_num_seqs}",
                self.max_num_batched_tokens,
            )
        if not self.enable_chunked_prefill and self.max_num_batched_tokens < self.max_model_len:
            raise _bad(
                "max_num_batched_tokens",
                f"at least max_model_len={self.max_model_len} without chunked prefill "
                "(a prompt is computed in one step)",
                self.max_num_batched_tokens,
            )

    @property
    def watermark_blocks(self) -> int:
        return int(self.watermark * self.num_kv_blocks)


@attrs.frozen(kw_only=True)
class EngineArgs:
    """Arguments of an engine, named as in vLLM.

    Attributes:
        model: Path (or hub name) of a Hugging Face model.
        tokenizer: Tokenizer path; defaults to ``model``.
        dtype: Weight, activation and KV cache dtype; "auto" takes the checkpoint's,
            except on CPU: bfloat16 for every checkpoint where the CPU has hardware
            bfloat16 (AVX512-BF16 or AMX; logged once), else float16 becomes bfloat16.
        kv_cache_dtype: "auto" keeps the KV cache in ``dtype``; "fp8" (= "fp8_e4m3") or
            "fp8_e5m2" store it in one byte per element (CPU only): half the memory
            and bandwidth of bfloat16, at the cost of precision (3 or 2 mantissa bits,
            no scaling factors). Values are rounded to nearest even and saturated.
        seed: Seed of the engine's random state (unseeded sampling).
        max_model_len: Context length; None takes the model config's.
        block_size: Tokens per KV block.
        num_kv_blocks: Device KV blocks; None sizes the cache from ``kv_cache_memory``.
        kv_cache_memory: Bytes for the device KV cache; None lets the model layer pick
            from the free memory.
        swap_space: GiB of host memory for swapped-out blocks.
        max_num_seqs: Most sequences running at once.
        max_num_batched_tokens: Token budget per step; None picks a default (see
            `core_config`).
        enable_chunked_prefill: Split long prompts over steps.
        enable_prefix_caching: Reuse KV blocks of shared prompt prefixes.
        preemption_mode: "recompute" or "swap".
        device: "auto" (CUDA when available), "cpu" or "cuda".
        load_format: "auto", "safetensors", "pt" or "dummy" (random weights).
        trust_remote_code: Allow model code from the checkpoint.
        tensor_parallel_size: Ranks each replica's model is sharded over (Megatron-style).
        data_parallel_size: Independent engine replicas; the front door routes each
            request to one of them.
        distributed_executor_backend: "ray" or "mp" (local processes) for the
            tensor-parallel ranks; None picks "ray" when ``worker_use_ray`` is set, else
            "mp".
        ray_address: Ray cluster to join; None joins the cluster named by
            ``RAY_ADDRESS`` when set, else starts a local Ray instance.
        worker_use_ray: The seed's name for ``distributed_executor_backend="ray"``.
        engine_use_ray: Run the engine core (scheduler and model runner) in a Ray actor;
            the async front door stays in the caller's process.
        enable_lora: Serve LoRA adapters (``lora_request`` on generate). With
            ``engine_use_ray`` or ``data_parallel_size > 1`` each engine actor reads an
            adapter's ``lora_path`` itself: on several nodes it must be readable on each.
        max_loras: Most distinct adapters in one step.
        max_lora_rank: Largest adapter rank accepted.
        max_cpu_loras: Adapters kept loaded in host memory (least recently used beyond
            that are unloaded; an adapter with a live request is always kept); None
            means ``max_loras``.
    """

    model: str
    tokenizer: str | None = None
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    block_size: int = 16
    num_kv_blocks: int | None = None
    kv_cache_memory: int | None = None
    swap_space: float = 4.0
    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    preemption_mode: PreemptionMode = "recompute"
    device: str = "auto"
    load_format: str = "auto"
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    data_parallel_size: int = 1
    distributed_executor_backend: str | None = None
    ray_address: str | None = None
    worker_use_ray: bool = False
    engine_use_ray: bool = False
    enable_lora: bool = False
    max_loras: int = 1
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None

    def __attrs_post_init__(self) -> None:
        if not self.model:
            raise _bad("model", "a non-empty path or name", self.model)
        _one_of("dtype", self.dtype, _DTYPES)
        _one_of("kv_cache_dtype", self.kv_cache_dtype, _KV_CACHE_DTYPES)
        _positive("max_model_len", self.max_model_len)
        _positive("block_size", self.block_size)
        _positive("num_kv_blocks", self.num_kv_blocks)
        _positive("kv_cache_memory", self.kv_cache_memory)
        if not self.swap_space >= 0:
            raise _bad("swap_space", "non-negative (GiB)", self.swap_space)
        _positive("max_num_seqs", self.max_num_seqs)
        _positive("max_num_batched_tokens", self.max_num_batched_tokens)
        _one_of("preemption_mode", self.preemption_mode, _PREEMPTION_MODES)
        _one_of("device", self.device, _DEVICES)
        _one_of("load_format", self.load_format, _LOAD_FORMATS)
        _positive("tensor_parallel_size", self.tensor_parallel_size)
        _positive("data_parallel_size", self.data_parallel_size)
        if self.distributed_executor_backend is not None:
            _one_of(
                "distributed_executor_backend",
                self.distributed_executor_backend,
                _EXECUTOR_BACKENDS,
            )
        if self.enable_lora and self.tensor_parallel_size > 1:
            raise NotSupportedError(
                "enable_lora with tensor_parallel_size > 1: LoRA under tensor parallelism is "
                "not supported yet (issue 15)"
            )
        if self.worker_use_ray and self.distributed_executor_backend == "mp":
            raise _bad(
                "distributed_executor_backend",
                "'ray' or None with worker_use_ray=True",
                self.distributed_executor_backend,
            )
        _positive("max_loras", self.max_loras)
        _positive("max_lora_rank", self.max_lora_rank)
        _positive("max_cpu_loras", self.max_cpu_loras)
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise _bad("max_cpu_loras", f"at least max_loras={self.max_loras}", self.max_cpu_loras)
        if self.max_num_batched_tokens is not None:
            if self.max_num_batched_tokens < self.max_num_seqs:
                raise _bad(
                    "max_num_batched_tokens",
                    f"at least max_num_seqs={self.max_num_seqs}",
                    self.max_num_batched_tokens,
                )
            if (
                not self.enable_chunked_prefill
                and self.max_model_len is not None
                and self.max_num_batched_tokens < self.max_model_len
            ):
                raise _bad(
                    "max_num_batched_tokens",
                    f"at least max_model_len={self.max_model_len} without chunked prefill",
                    self.max_num_batched_tokens,
                )

    @property
    def executor_backend(self) -> str:
        """How tensor-parallel ranks run: "ray" (actors) or "mp" (local processes)."""
        if self.distributed_executor_backend is not None:
            return self.distributed_executor_backend
        return "ray" if self.worker_use_ray else "mp"

    def core_config(
        self, *, num_kv_blocks: int, num_host_blocks: int, max_model_len: int
    ) -> CoreConfig:
        """The core's configuration once the model layer resolved the model-dependent values.

        Args:
            num_kv_blocks: Device KV blocks that fit (``self.num_kv_blocks`` when set).
            num_host_blocks: Host blocks that fit in ``swap_space``.
            max_model_len: The context length (``self.max_model_len`` when set, else the
                model's).

        The token budget defaults to max(2048, max_num_seqs) with chunked prefill, and
        to max(max_model_len, 2048, max_num_seqs) without it, so that any prompt fits
        in one step.

        Raises:
            ValueError: The cache cannot hold one sequence of ``max_model_len`` tokens,
                or another cross-field constraint fails.
        """
        budget = self.max_num_batched_tokens
        if budget is None:
            budget = max(DEFAULT_CHUNKED_BATCHED_TOKENS, self.max_num_seqs)
            if not self.enable_chunked_prefill:
                budget = max(budget, max_model_len)
        if max_model_len > num_kv_blocks * self.block_size:
            raise _bad(
                "max_model_len",
                f"at most the KV cache's capacity of {num_kv_blocks * self.block_size} tokens "
                f"({num_kv_blocks} blocks of {self.block_size}); lower max_model_len or give "
                "the cache more memory",
                max_model_len,
            )
        return CoreConfig(
            block_size=self.block_size,
            num_kv_blocks=num_kv_blocks,
            num_host_blocks=num_host_blocks,
            max_model_len=max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=budget,
            enable_chunked_prefill=self.enable_chunked_prefill,
            enable_prefix_caching=self.enable_prefix_caching,
            preemption_mode=self.preemption_mode,
            max_loras=self.max_loras if self.enable_lora else 0,
        )


@attrs.frozen(kw_only=True)
class AsyncEngineArgs(EngineArgs):
    """`EngineArgs` plus the async front door's logging options.

    Attributes:
        log_requests: Log one line per request when it ends: its id, prompt tokens,
            max tokens, finish reason and timings.
        log_requests_verbose: Also log each request's prompt, token ids and sampling
            parameters at INFO (at DEBUG they are logged anyway).
        max_log_len: Cut logged prompts to this many characters and token ids (None: no
            limit).
        disable_log_stats: Do not log periodic throughput and cache statistics.
    """

    log_requests: bool = True
    log_requests_verbose: bool = False
    max_log_len: int | None = None
    disable_log_stats: bool = False

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        if self.max_log_len is not None and self.max_log_len < 0:
            raise _bad("max_log_len", "non-negative or None", self.max_log_len)
