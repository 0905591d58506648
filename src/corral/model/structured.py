"""Structured outputs in the model layer: grammars compiled with xgrammar, logits masked by them.

`StructuredOutputs` belongs to a model runner. The front doors call `bind` in a worker
thread before a request is admitted, so compiling never runs on the event loop or in
the engine step; the runner calls `apply` on each step's sampling logits. Matcher state
lives here, keyed by sequence id, and is derived from the sequence's token history: it
advances by the tokens a sequence gained since the last step, is rebuilt from the
history for a sequence it does not know (a child forked by ``n``/``best_of``, a
sequence back from preemption), and is dropped for every sequence not scheduled in a
step (finished, aborted or preempted). The core never sees any of it.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
import torch

from corral.core.interface import SchedulerOutput
from corral.errors import NotSupportedError
from corral.sampling_params import SamplingParams
from corral.structured_outputs import StructuredOutputsParams

logger = logging.getLogger(__name__)

# JSON schema keywords that xgrammar ignores (and allOf with several entries, which it
# does not intersect); accepting them would let outputs that violate the schema
# through, so they are refused up front.
_UNSUPPORTED_KEYWORDS = frozenset(
    {"not", "if", "then", "else", "dependentSchemas", "dependentRequired", "uniqueItems"}
)
_NAMED_SUBSCHEMAS = frozenset({"properties", "$defs", "definitions", "patternProperties"})
_CACHE_SIZE = 256
_HEX_ESCAPE = re.compile(r"(\\\\)|\\x([0-9a-fA-F]{2})")
# A character of a JSON string in xgrammar's EBNF, without and with the control range.
_LOOSE_STRING_CHAR = r"[^\"\\\r\n]"
_STRICT_STRING_CHAR = r"[^\0-\x1f\"\\\r\n]"
# xgrammar prefixes its messages with a time stamp and a C++ source location.
_XGRAMMAR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: ")


def _unsupported_keyword(schema: Any, path: str = "#") -> str | None:
    """Where the first keyword xgrammar ignores sits in ``schema``, or None."""
    if isinstance(schema, list):
        for index, value in enumerate(schema):
            found = _unsupported_keyword(value, f"{path}/{index}")
            if found is not None:
                return found
        return None
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key in _UNSUPPORTED_KEYWORDS or (
            key == "allOf" and isinstance(value, list) and len(value) > 1
        ):
            return f"{path}/{key}"
        if key in _NAMED_SUBSCHEMAS and isinstance(value, dict):
            # Keys here are property or definition names, not keywords.
            for name, sub in value.items():
                found = _unsupported_keyword(sub, f"{path}/{key}/{name}")
                if found is not None:
                    return found
        elif key not in ("enum", "const", "default", "examples"):
            found = _unsupported_keyword(value, f"{path}/{key}")
            if found is not None:
                return found
    return None


def _strict_json_grammar(schema: str) -> str:
    """The EBNF of ``schema``'s JSON, readable by a strict parser.

    Compact (no whitespace runs for the model to pad with) and strict (no properties
    beyond the schema's). xgrammar's length-bounded string rule lets raw control
    characters through, which `json.loads` rejects; they are excluded here as in its
    unbounded string rule. The text round trip (xgrammar's printer, then its parser)
    is held to exactness by the tests over the schema corpus.
    """
    import xgrammar

    grammar = xgrammar.Grammar.from_json_schema(schema, any_whitespace=False, strict_mode=True)
    text = str(grammar).replace(_LOOSE_STRING_CHAR, _STRICT_STRING_CHAR)
    # xgrammar prints code points below 256 as ``\xHH`` but its parser reads as many
    # hex digits as follow (``\xefc`` is U+0EFC); four-digit escapes read back exactly.
    return _HEX_ESCAPE.sub(lambda m: m[1] or f"\\u00{m[2]}", text)


@attrs.define
class _Matcher:
    matcher: Any
    num_accepted: int


class StructuredOutputs:
    """Compiles `StructuredOutputsParams` for one tokenizer and masks logits with them.

    xgrammar is imported on first use, so an engine that never sees a structured
    request never loads it.

    Args:
        tokenizer: The Hugging Face tokenizer the model's tokens come from.
        vocab_size: The model's vocabulary (logits width; may exceed the tokenizer's).
        eos_token_ids: The tokens that end a sequence: allowed exactly when the grammar
            is complete.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._matchers: dict[int, _Matcher] = {}

    def bind(self, params: SamplingParams) -> SamplingParams:
        """``params`` with its structured outputs compiled (blocking: call it in a worker
        thread). Params without structured outputs come back unchanged.

        Raises:
            ValueError: the schema, regex or grammar cannot be compiled; the message
                names the field and the problem.
        """
        spec = params.structured_outputs
        if spec is None or spec.compiled is not None:
            return params
        return attrs.evolve(params, structured_outputs=spec.bind(self.compile(spec)))

    def compile(self, spec: StructuredOutputsParams) -> Any:
        """The compiled grammar of ``spec``, from the cache when its canonical text was
        compiled before (blocking)."""
        key = spec.key
        with self._lock:
            compiled = self._cache.get(key)
            if compiled is not None:
                self._cache.move_to_end(key)
                return compiled
            compiler = self._get_compiler()
        compiled = self._compile(compiler, spec.kind, key[1], spec)
        self._check_startable(compiled, spec.kind)
        with self._lock:
            self._cache[key] = compiled
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
        return compiled

    def _get_compiler(self) -> Any:
        if self._compiler is None:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=self.eos_token_ids
            )
            # Caching is ours (by canonical text); xgrammar's would hold a second copy.
            self._compiler = xgrammar.GrammarCompiler(info, cache_enabled=False)
        return self._compiler

    @staticmethod
    def _compile(compiler: Any, kind: str, text: str, spec: StructuredOutputsParams) -> Any:
        field = f"structured_outputs.{kind}"
        if kind == "json":
            found = _unsupported_keyword(json.loads(text))
            if found is not None:
                raise ValueError(f"{field}: the schema keyword at {found} is not supported")
        try:
            if kind in ("json", "json_object"):
                return compiler.compile_grammar(
                    _strict_json_grammar(text if kind == "json" else '{"type": "object"}')
                )
            if kind == "regex":
                return compiler.compile_regex(text)
            if kind == "choice":
                choices = spec.choice or ()
                ebnf = "root ::= " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
                return compiler.compile_grammar(ebnf)
            return compiler.compile_grammar(text)
        except RuntimeError as exc:
            message = _XGRAMMAR_PREFIX.sub("", str(exc).strip())
            raise ValueError(f"{field}: {message}") from exc

    def _check_startable(self, compiled: Any, kind: str) -> None:
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(1, self.vocab_size)
        xgrammar.GrammarMatcher(compiled).fill_next_token_bitmask(bitmask, 0)
        if not bool(bitmask.any()):
            raise ValueError(
                f"structured_outputs.{kind}: no token of this model's vocabulary can begin "
                "an output of this grammar"
            )

    def apply(self, logits: torch.Tensor, scheduler_output: SchedulerOutput) -> None:
        """Mask, in place, the sampling rows of ``logits`` whose request is structured.

        ``logits`` holds one row per sample, flat over the scheduled entries in batch
        order (`corral.core.interface`). A step without a structured row costs one pass
        over the entries and nothing else.
        """
        rows: list[tuple[int, Any]] = []
        row = 0
        for seq, count in zip(scheduler_output.seqs, scheduler_output.num_samples, strict=True):
            if count and seq.params.structured_outputs is not None:
                rows.extend((row + j, seq) for j in range(count))
            row += count
        if self._matchers:
            scheduled = {seq.seq_id for seq in scheduler_output.seqs}
            for seq_id in [s for s in self._matchers if s not in scheduled]:
                del self._matchers[seq_id]
        if not rows:
            return
        import xgrammar

        bitmask = xgrammar.allocate_token_bitmask(len(rows), self.vocab_size)
        for index, (_, seq) in enumerate(rows):
            self._matcher(seq).fill_next_token_bitmask(bitmask, index)
        dead = (bitmask == 0).all(dim=1)
        if bool(dead.any()):
            # The vocabulary cannot continue the grammar here (a tokenizer lacking some
            # characters): end the output rather than sample from nothing.
            for index in dead.nonzero().flatten().tolist():
                logger.warning(
                    "request %r: no token can continue its grammar; ending its output",
                    rows[index][1].request_id,
                )
                for eos in self.eos_token_ids:
                    bitmask[index, eos // 32] |= 1 << (eos % 32)
        width = logits.shape[1]
        shifts = torch.arange(32, dtype=torch.int32, device=logits.device)
        allowed = (bitmask.to(logits.device).unsqueeze(-1) >> shifts) & 1
        allowed = allowed.flatten(1)[:, :width].bool()
        index_tensor = torch.tensor([r for r, _ in rows], device=logits.device)
        logits[index_tensor] = logits[index_tensor].masked_fill(~allowed, float("-inf"))

    def _matcher(self, seq: Any) -> Any:
        output_ids = seq.token_ids[seq.num_prompt_tokens :]
        entry = self._matchers.get(seq.seq_id)
        if entry is None or entry.num_accepted > len(output_ids):
            import xgrammar

            spec = seq.params.structured_outputs
            # A request admitted without a front door (an `EngineCore` driven
            # directly) is compiled here, in the step.
            compiled = spec.compiled if spec.compiled is not None else self.compile(spec)
            entry = _Matcher(xgrammar.GrammarMatcher(compiled), 0)
            self._matchers[seq.seq_id] = entry
        for token_id in output_ids[entry.num_accepted :]:
            if not entry.matcher.accept_token(token_id):
                raise RuntimeError(
                    f"grammar of request {seq.request_id!r} rejected token {token_id} that "
                    "was sampled under its mask"
                )
            entry.num_accepted += 1
        return entry.matcher


def bind_structured_outputs(runner: object, params: SamplingParams) -> SamplingParams:
    """`StructuredOutputs.bind` through ``runner`` (blocking; the front doors' entry).

    Raises:
        NotSupportedError: structured outputs asked of a runner without them (the fake
            runner of `corral.testing`).
        ValueError: the constraint cannot be compiled.
    """
    spec = params.structured_outputs
    if spec is None or spec.compiled is not None:
        return params
    structured = getattr(runner, "structured_outputs", None)
    if not isinstance(structured, StructuredOutputs):
        raise NotSupportedError(
            "structured_outputs: this engine's model runner does not support structured outputs"
        )
    return structured.bind(params)
