"""`LLM`: the offline front door; a batch of prompts in, their outputs out."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from corral.beam_search import BeamSearchOutput, BeamSearchParams, BeamSearchSequence
from corral.config import EngineArgs
from corral.core.validation import check_sampling_params, validate_request
from corral.errors import NotSupportedError
from corral.lora.request import LoRARequest
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.tokenization import bind_bad_words, encode_prompt


class LLM:
    """Generates completions for a batch of prompts with continuous batching (like vLLM's ``LLM``).

    Args:
        model: Path of a local Hugging Face model folder, or a model id in the local HF cache.
        **engine_args: Any other `EngineArgs` field (``dtype``, ``max_model_len``,
            ``num_kv_blocks``, ``seed``, ...).

    Raises:
        ValueError: for bad engine arguments or a model that cannot be loaded.
    """

    def __init__(self, model: str, **engine_args: Any) -> None:
        # Imported here so that `import corral` does not pay for torch and the models.
        from corral._compose import build_engine_core

        self.engine_args = EngineArgs(model=model, **engine_args)
        if self.engine_args.engine_use_ray or self.engine_args.data_parallel_size > 1:
            raise NotSupportedError(
                "LLM: engine_use_ray and data_parallel_size > 1 are served by the async "
                "engine only (corral.open_engine); the offline LLM runs in this process"
            )
        self.engine_core, self.tokenizer, self.model_config = build_engine_core(self.engine_args)
        self._request_counter = itertools.count()

    def get_tokenizer(self) -> Any:
        """The Hugging Face tokenizer the engine encodes and decodes with."""
        return self.tokenizer

    def generate(
        self,
        prompts: str | Sequence[str] | None = None,
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        prompt_token_ids: Sequence[int] | Sequence[Sequence[int]] | None = None,
        use_tqdm: bool = True,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Run every prompt to completion and return the final outputs in input order.

        Args:
            prompts: One prompt or a list; may be None when ``prompt_token_ids`` is given.
            sampling_params: One `SamplingParams` for all prompts or one per prompt;
                None means the defaults.
            prompt_token_ids: Token ids instead of (or alongside, then winning over)
                the prompt texts: one list of ids or a list of them.
            use_tqdm: Show a progress bar of finished requests.
            lora_request: The LoRA adapter for every prompt, or one (or None) per
                prompt; needs ``enable_lora``.

        Raises:
            ValueError: before any request starts, when the inputs disagree in length or
                a request can never be served (an empty prompt, out-of-vocabulary ids,
                longer than max_model_len or the KV cache, ``best_of`` above
                ``max_num_seqs``; see `corral.core.validation.validate_request`), a
                structured output's schema, regex or grammar does not compile, or a
                LoRA adapter cannot be loaded (or LoRA is not enabled).
        """
        texts, id_lists = _normalize_prompts(prompts, prompt_token_ids)
        num_requests = len(texts) if texts is not None else len(id_lists or [])
        params = [
            bind_bad_words(self.tokenizer, check_sampling_params(p))
            for p in _normalize_params(sampling_params, num_requests)
        ]
        if any(p.structured_outputs is not None for p in params):
            params = self._bind_structured_outputs(params)
        encoded = [
            encode_prompt(
                self.tokenizer,
                texts[i] if texts is not None and id_lists is None else None,
                id_lists[i] if id_lists is not None else None,
                vocab_size=self.model_config.vocab_size,
                max_model_len=self.model_config.max_model_len,
                truncate_prompt_tokens=params[i].truncate_prompt_tokens,
            )
            for i in range(num_requests)
        ]
        core = self.engine_core
        for ids, request_params in zip(encoded, params, strict=True):
            error = validate_request(
                core.config, ids, request_params, has_detokenizer=core.detokenizer is not None
            )
            if error is not None:
                raise ValueError(error)
        loras = _normalize_loras(lora_request, num_requests)
        pinned = self._pin_loras(loras)
        try:
            order: dict[str, int] = {}
            for i, ids in enumerate(encoded):
                request_id = str(next(self._request_counter))
                order[request_id] = i
                prompt_text = texts[i] if texts is not None else None
                lora = loras[i]
                self.engine_core.add_request(
                    request_id,
                    ids,
                    params[i],
                    prompt=prompt_text,
                    lora_int_id=lora.lora_int_id if lora is not None else 0,
                )
            return self._run(order, use_tqdm)
        finally:
            for lora_int_id in pinned:
                self.engine_core.runner.lora_manager.unpin(lora_int_id)  # type: ignore[attr-defined]

    def _pin_loras(self, loras: list[LoRARequest | None]) -> list[int]:
        """Load every adapter named (before any request starts) and pin it for the call."""
        wanted = {lora.lora_int_id: lora for lora in loras if lora is not None}
        if not wanted:
            return []
        manager = getattr(self.engine_core.runner, "lora_manager", None)
        if manager is None:
            raise ValueError("lora_request: LoRA is not enabled (create the LLM with enable_lora)")
        pinned: list[int] = []
        try:
            for lora in wanted.values():
                manager.load(lora, pin=True)
                pinned.append(lora.lora_int_id)
        except BaseException:
            for lora_int_id in pinned:
                manager.unpin(lora_int_id)
            raise
        return pinned

    # --- beam search ---
    def beam_search(
        self,
        prompts: Sequence[str | dict[str, Any]],
        params: BeamSearchParams,
        use_tqdm: bool = False,
    ) -> list[BeamSearchOutput]:
        """Beam search over each prompt (vLLM's ``LLM.beam_search``).

        Runs the engine core's beam search
        (`BeamSearchParams.to_sampling_params`); the beams of all prompts are
        batched together.

        Args:
            prompts: Each a string, ``{"prompt": str}`` or ``{"prompt_token_ids": [...]}``.
            params: The search's parameters.
            use_tqdm: Show a progress bar of finished prompts.

        Returns:
            Per prompt, its ``beam_width`` sequences, best first (by
            ``cum_logprob / num_output_tokens ** length_penalty``).

        Raises:
            ValueError: a malformed prompt, or one `generate` would refuse.
            NotSupportedError: ``temperature > 0``.
        """
        sampling_params = params.to_sampling_params()
        id_lists: list[list[int]] = []
        for prompt in prompts:
            if isinstance(prompt, str):
                prompt = {"prompt": prompt}
            if (
                not isinstance(prompt, dict)
                or len({"prompt", "prompt_token_ids"} & prompt.keys()) != 1
            ):
                raise ValueError(
                    "prompts: each must be a string, {'prompt': str} or "
                    f"{{'prompt_token_ids': [...]}}, got {prompt!r}"
                )
            id_lists.append(
                encode_prompt(
                    self.tokenizer,
                    prompt.get("prompt"),
                    prompt.get("prompt_token_ids"),
                    vocab_size=self.model_config.vocab_size,
                    max_model_len=self.model_config.max_model_len,
                )
            )
        if not id_lists:
            return []
        results = self.generate(
            prompt_token_ids=id_lists, sampling_params=sampling_params, use_tqdm=use_tqdm
        )
        return [
            BeamSearchOutput(
                [
                    BeamSearchSequence(
                        tokens=[*output.prompt_token_ids, *completion.token_ids],
                        logprobs=list(completion.logprobs or []),
                        cum_logprob=completion.cumulative_logprob,
                        text=completion.text,
                        finish_reason=completion.finish_reason,
                        stop_reason=completion.stop_reason,
                    )
                    for completion in output.outputs
                ]
            )
            for output in results
        ]

    # --- end beam search ---
    def _bind_structured_outputs(self, params: list[SamplingParams]) -> list[SamplingParams]:
        # Before any request is added: a grammar that does not compile leaves nothing
        # half-submitted. Equal constraints compile once (the compiler caches them).
        from corral.model.structured import bind_structured_outputs

        return [bind_structured_outputs(self.engine_core.runner, p) for p in params]

    def _run(self, order: dict[str, int], use_tqdm: bool) -> list[RequestOutput]:
        results: list[RequestOutput | None] = [None] * len(order)
        with tqdm(total=len(order), desc="Processed prompts", disable=not use_tqdm) as bar:
            while self.engine_core.has_unfinished_requests():
                for output in self.engine_core.step():
                    if output.finished and output.request_id in order:
                        results[order[output.request_id]] = output
                        bar.update(1)
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            raise RuntimeError(f"engine stopped with requests {missing} unfinished")
        return [r for r in results if r is not None]


def _normalize_prompts(
    prompts: str | Sequence[str] | None,
    prompt_token_ids: Sequence[int] | Sequence[Sequence[int]] | None,
) -> tuple[list[str] | None, list[list[int]] | None]:
    if prompts is None and prompt_token_ids is None:
        raise ValueError("prompts: give prompts or prompt_token_ids")
    texts = [prompts] if isinstance(prompts, str) else None if prompts is None else list(prompts)
    id_lists: list[list[int]] | None = None
    if prompt_token_ids is not None:
        items: list[Any] = list(prompt_token_ids)
        if items and all(isinstance(t, int) for t in items):
            id_lists = [items]
        else:
            id_lists = [list(ids) for ids in items]
    if texts is not None and id_lists is not None and len(texts) != len(id_lists):
        raise ValueError(
            f"prompt_token_ids: {len(id_lists)} lists for {len(texts)} prompts; lengths must match"
        )
    return texts, id_lists


def _normalize_params(
    sampling_params: SamplingParams | Sequence[SamplingParams] | None, num_requests: int
) -> list[SamplingParams]:
    if sampling_params is None:
        return [SamplingParams()] * num_requests
    if isinstance(sampling_params, SamplingParams):
        return [sampling_params] * num_requests
    params = list(sampling_params)
    if len(params) != num_requests:
        raise ValueError(
            f"sampling_params: {len(params)} given for {num_requests} prompts; lengths must match"
        )
    return params


def _normalize_loras(
    lora_request: LoRARequest | Sequence[LoRARequest | None] | None, num_requests: int
) -> list[LoRARequest | None]:
    if lora_request is None or isinstance(lora_request, LoRARequest):
        return [lora_request] * num_requests
    loras = list(lora_request)
    if len(loras) != num_requests:
        raise ValueError(
            f"lora_request: {len(loras)} given for {num_requests} prompts; lengths must match"
        )
    for lora in loras:
        if lora is not None and not isinstance(lora, LoRARequest):
            raise ValueError(f"lora_request must be a LoRARequest, got {type(lora).__name__}")
    return loras
