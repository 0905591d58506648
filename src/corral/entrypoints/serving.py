"""What the completion and chat handlers share: the engine they talk to, prompt
checks, running one engine request, and logprob formatting.

A request's life in the server: its prompt is tokenized here (so that the context
length check can answer 400 before the engine sees it), the engine runs it, and
every snapshot goes to the handler. Requests are submitted before the response
starts (so that a refusal is still a plain 400), then consumed; leaving `consume`
early, by cancellation or an error, leaves the engine stream's ``async with`` and
so aborts the engine request synchronously; its KV blocks are free after the
engine's next step.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import attrs

from corral._concurrency import FirstError
from corral.engine import AsyncEngine, RequestStream
from corral.entrypoints.assembly import DeltaAccumulator
from corral.entrypoints.errors import APIError, bad_request
from corral.entrypoints.metrics import ServerMetrics
from corral.entrypoints.protocol import ChatCompletionRequest, CompletionRequest
from corral.entrypoints.sse import wait_disconnect
from corral.entrypoints.tool_parsers import ToolParser
from corral.errors import EngineDeadError
from corral.lora.request import LoRARequest
from corral.outputs import RequestOutput
from corral.sampling_params import RequestOutputKind, SamplingParams

T = TypeVar("T")


@attrs.define
class ServingContext:
    """Everything a handler needs, built once when the server starts.

    Attributes:
        engine: The running engine.
        tokenizer: The model's Hugging Face tokenizer.
        model_path: The model the engine loaded (``root`` in ``/v1/models``).
        served_model_names: Names a request's ``model`` may use; the first is the
            name responses carry when a request gives none.
        max_model_len: Longest prompt plus output.
        vocab_size: Token ids must lie below it.
        metrics: The server's metrics.
        tool_parser: Reads tool calls out of answers under ``tool_choice: "auto"``
            (``--tool-call-parser``); None: no parser.
        enable_auto_tool_choice: Whether ``tool_choice: "auto"`` is served
            (``--enable-auto-tool-choice``, which needs a parser).
        lora_modules: LoRA adapters by served name (a request's ``model`` selects one).
        allow_runtime_lora_updating: Whether adapters may be loaded and unloaded
            through the API.
    """

    engine: AsyncEngine
    tokenizer: Any
    model_path: str
    served_model_names: list[str]
    max_model_len: int
    vocab_size: int
    metrics: ServerMetrics
    tool_parser: ToolParser | None = None
    enable_auto_tool_choice: bool = False
    lora_modules: dict[str, LoRARequest] = attrs.field(factory=dict)
    allow_runtime_lora_updating: bool = False
    _token_text: dict[int, str] = attrs.field(factory=dict)
    # Every adapter name ever served, by id: metrics still name an unloaded adapter
    # whose requests are finishing.
    lora_names: dict[int, str] = attrs.field(factory=dict)

    def model_name(self, requested: str | None) -> str:
        """The served name a request addresses (404 for an unknown one)."""
        if requested is None:
            return self.served_model_names[0]
        if requested not in self.served_model_names and requested not in self.lora_modules:
            raise APIError(404, f"model {requested!r} does not exist", "model")
        return requested

    async def load_lora(self, lora_name: str, lora_path: str) -> LoRARequest:
        """Read an adapter (in a worker thread) and serve it under ``lora_name``.

        Raises:
            APIError: 400 for a taken name or a bad adapter (the problem named).
        """
        if not lora_name or lora_name in self.served_model_names or lora_name in self.lora_modules:
            raise APIError(400, f"lora_name {lora_name!r} is empty or already served", "lora_name")
        lora_int_id = max(self.lora_names, default=0) + 1
        try:
            lora = LoRARequest(lora_name, lora_int_id, lora_path)
            await self.engine.add_lora(lora)
        except ValueError as exc:
            raise APIError(400, str(exc), "lora_path") from exc
        self.lora_modules[lora_name] = lora
        self.lora_names[lora_int_id] = lora_name
        return lora

    async def unload_lora(self, lora_name: str) -> None:
        """Stop serving an adapter: requests in flight finish, new ones get 404.

        Raises:
            APIError: 404 for a name that is not a served adapter.
        """
        lora = self.lora_modules.pop(lora_name, None)
        if lora is None:
            raise APIError(404, f"LoRA adapter {lora_name!r} is not loaded", "lora_name")
        await self.engine.remove_lora(lora.lora_int_id)

    def begin(self, request: ChatCompletionRequest | CompletionRequest) -> str:
        """The checks a generation request starts with; returns the served model name.

        Raises:
            APIError: 404 for an unknown model, 400 for streaming with best_of != n.
            EngineDeadError: the engine died (answered 503).
        """
        model = self.model_name(request.model)
        self.check_alive()
        if request.stream and request.best_of not in (None, request.n):
            raise APIError(400, "best_of: streaming needs best_of equal to n", "best_of")
        return model

    def check_alive(self) -> None:
        """Raise `EngineDeadError` (answered 503) once the engine has died or closed."""
        if not self.engine.is_running:
            raise EngineDeadError("the engine is not running")

    def token_text(self, token_id: int) -> str:
        """The text of one token, as logprobs show it."""
        text = self._token_text.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id])
            self._token_text[token_id] = text
        return text

    def encode(
        self, prompt: str | list[int], *, add_special_tokens: bool = True, field: str = "prompt"
    ) -> list[int]:
        """Token ids of a text or id prompt, checked against the vocabulary (400 naming ``field``)."""
        if isinstance(prompt, str):
            ids = list(self.tokenizer(prompt, add_special_tokens=add_special_tokens).input_ids)
        else:
            ids = prompt
        if not ids:
            raise APIError(400, f"{field}: empty (at least one token is needed)", field)
        bad = next((t for t in ids if not 0 <= t < self.vocab_size), None)
        if bad is not None:
            raise APIError(
                400,
                f"{field}: token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                field,
            )
        return ids

    def max_tokens(self, requested: int | None, num_prompt_tokens: int) -> int:
        """The output budget; what the context leaves when the request gave none.

        Raises:
            APIError: 400 when prompt plus ``max_tokens`` exceed ``max_model_len``.
        """
        room = self.max_model_len - num_prompt_tokens
        if room < 1 or (requested is not None and requested > room):
            wanted = num_prompt_tokens + (requested or 1)
            raise APIError(
                400,
                f"max_tokens: this model's maximum context length is {self.max_model_len} "
                f"tokens, but {wanted} were requested ({num_prompt_tokens} in the prompt, "
                f"{requested or 1} for the completion); shorten the prompt or lower max_tokens",
                "max_tokens" if room >= 1 else "prompt",
            )
        return room if requested is None else requested

    async def compile_structured_outputs(
        self, params: SamplingParams, field: str | None
    ) -> SamplingParams:
        """Compile ``params``' structured outputs (in a worker thread) before the request
        is submitted, so that a bad schema is a 400 naming ``field`` even when the
        response would stream."""
        if params.structured_outputs is None:
            return params
        try:
            return await self.engine.prepare_sampling_params(params)
        except ValueError as exc:
            raise APIError(400, f"{field}: {exc}", field) from exc

    def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams,
        *,
        prompt: str | None = None,
        model: str | None = None,
    ) -> RequestStream:
        """Hand one request to the engine; it runs from now on. ``prompt`` is the text
        the ids came from, for the engine's request log; ``model``, the served name
        (an adapter's name runs the request with that adapter).

        The caller must end the returned stream (`consume` does, or ``close()``):
        that is what aborts the request when its client goes away.

        Raises:
            APIError: 400 when the engine refuses the request (e.g. ``best_of`` beyond
                ``max_num_seqs``).
            EngineDeadError: the engine died (answered 503).
        """
        self.check_alive()
        try:
            return self.engine.generate(
                prompt,
                params,
                request_id,
                prompt_token_ids=prompt_token_ids,
                lora_request=self.lora_modules.get(model) if model is not None else None,
            )
        except ValueError as exc:
            raise bad_request(exc) from exc

    def submit_all(
        self,
        requests: Sequence[tuple[str, list[int], SamplingParams, str | None]],
        model: str | None = None,
    ) -> list[RequestStream]:
        """`submit` each ``(request_id, prompt_token_ids, params, prompt)``, all or none:
        when one is refused, those already submitted are aborted before the error
        propagates."""
        streams: list[RequestStream] = []
        try:
            for request_id, token_ids, params, prompt in requests:
                streams.append(
                    self.submit(request_id, token_ids, params, prompt=prompt, model=model)
                )
        except BaseException:
            for stream in streams:
                stream.close()
            raise
        return streams

    async def consume(
        self,
        stream: RequestStream,
        on_output: Callable[[RequestOutput], Awaitable[None]] | None = None,
    ) -> RequestOutput:
        """Read a submitted request to its end and return its final output.

        ``on_output`` sees every snapshot (the last one included). Leaving early (a
        cancellation, an error) ends the stream, which aborts the request; it then
        counts as aborted in the metrics.

        Raises:
            APIError: 400 when the engine core gave up on the request.
            EngineDeadError: the engine died (answered 503).
        """
        final: RequestOutput | None = None
        # A streamed request's outputs are deltas (see assembly); callers get the
        # cumulative final output either way.
        accumulator = DeltaAccumulator() if stream.output_kind is RequestOutputKind.DELTA else None
        try:
            async with stream:
                async for output in stream:
                    if accumulator is not None:
                        accumulator.add(output)
                    if on_output is not None:
                        await on_output(output)
                    if output.finished:
                        final = output if accumulator is None else accumulator.result(output)
        except ValueError as exc:
            raise bad_request(exc) from exc
        finally:
            if final is None:
                self.metrics.observe_aborted()
        if final is None:
            raise RuntimeError(
                f"request {stream.request_id}: the engine stream ended without a final output"
            )
        self.metrics.observe_finished(final)
        if final.error is not None:
            raise APIError(400, final.error, "prompt")
        return final


async def run_all(jobs: Sequence[Callable[[], Awaitable[None]]]) -> None:
    """Run ``jobs`` concurrently; the first failure cancels the others and is re-raised
    as it is (not wrapped in an ExceptionGroup), so that the error handlers see it."""
    first = FirstError()
    async with anyio.create_task_group() as tg:

        async def guard(job: Callable[[], Awaitable[None]]) -> None:
            with first.catch(tg.cancel_scope):
                await job()

        for job in jobs:
            tg.start_soon(guard, job)
    first.reraise()


async def unless_disconnected(receive: Any, work: Callable[[], Awaitable[T]]) -> T | None:
    """Run ``work`` and return its result, or None if the client disconnects first
    (``work`` is then cancelled, which aborts its engine requests). An exception of
    ``work`` propagates as it is, not wrapped in an ExceptionGroup."""
    result: T | None = None
    first = FirstError()
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            await wait_disconnect(receive)
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        with first.catch():
            result = await work()
        tg.cancel_scope.cancel()
    first.reraise()
    return result
