"""`StructuredOutputsParams`: the shape a request's output must take (JSON schema, regex, ...).

A value type like `SamplingParams`: validated on construction, frozen, free of the
grammar engine. The front doors compile it (``xgrammar``, in a worker thread, before
the request is admitted) and the model runner masks each step's logits with it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

_KINDS = ("json", "regex", "choice", "grammar", "json_object")


def _to_choice(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        raise ValueError("structured_outputs.choice must be a list of strings, got a string")
    return tuple(value)


@attrs.frozen(kw_only=True)
class StructuredOutputsParams:
    """Constrains a request's output; exactly one field is set (names follow vLLM's).

    Attributes:
        json: A JSON schema (a dict or its JSON text): the output is one JSON value
            that validates against it, compact (one space after ``,`` and ``:``, no
            other whitespace), with no raw control characters in strings, so that a
            strict parser (``json.loads``) reads it.
        regex: The output matches this regular expression (xgrammar's dialect).
        choice: The output is exactly one of these strings.
        grammar: An EBNF grammar in xgrammar's (GBNF-like) syntax with a ``root`` rule.
        json_object: True: the output is any JSON object (same formatting as ``json``).

    The output ends when the grammar is complete: the end-of-sequence token is allowed
    only then, so a request that finishes with reason "stop" holds a complete match.
    ``max_tokens`` and stop strings can still cut it short.
    """

    json: str | dict[str, Any] | None = None
    regex: str | None = None
    choice: tuple[str, ...] | None = attrs.field(default=None, converter=_to_choice)
    grammar: str | None = None
    json_object: bool | None = None
    # The compiled grammar, set by `bind` (an opaque object to every layer but the
    # model's); excluded from equality, hashing and repr.
    _compiled: object = attrs.field(default=None, init=False, eq=False, repr=False, hash=False)

    def __attrs_post_init__(self) -> None:
        given = [
            kind
            for kind in _KINDS
            if getattr(self, kind) is not None and getattr(self, kind) is not False
        ]
        if len(given) != 1:
            raise ValueError(
                "structured_outputs: set exactly one of json, regex, choice, grammar, "
                f"json_object; got {given or 'none'}"
            )
        if self.json is not None and not isinstance(self.json, str | dict):
            raise ValueError(
                f"structured_outputs.json must be a dict or a JSON string, got "
                f"{type(self.json).__name__}"
            )
        if isinstance(self.json, str):
            try:
                schema = json.loads(self.json)
            except json.JSONDecodeError as exc:
                raise ValueError(f"structured_outputs.json is not valid JSON: {exc}") from exc
            if not isinstance(schema, dict | bool):
                raise ValueError("structured_outputs.json must be a JSON object (a schema)")
        for kind in ("regex", "grammar"):
            value = getattr(self, kind)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"structured_outputs.{kind} must be a non-empty string")
        if self.choice is not None and (
            not self.choice or not all(isinstance(c, str) and c for c in self.choice)
        ):
            raise ValueError(
                "structured_outputs.choice must be a non-empty list of non-empty strings"
            )
        if self.json_object is not None and not isinstance(self.json_object, bool):
            raise ValueError("structured_outputs.json_object must be a bool")

    @property
    def kind(self) -> str:
        """Which field is set: "json", "regex", "choice", "grammar" or "json_object"."""
        return next(k for k in _KINDS if getattr(self, k) not in (None, False))

    @property
    def key(self) -> tuple[str, str]:
        """Canonical text of the constraint (the compile cache's key, and the text that
        is compiled): equal for equal constraints, whatever the spacing or keyword order
        of a JSON schema. The order of a schema's ``properties`` is kept: it is the order
        the object's keys are written in, as with OpenAI and vLLM."""
        kind = self.kind
        if kind == "json":
            schema = json.loads(self.json) if isinstance(self.json, str) else self.json
            return kind, json.dumps(_canonical_schema(schema), separators=(",", ":"))
        if kind == "choice":
            return kind, json.dumps(self.choice)
        if kind == "json_object":
            return kind, ""
        return kind, str(getattr(self, kind))

    @property
    def compiled(self) -> object:
        """The compiled grammar once a front door has bound it, else None."""
        return self._compiled

    def bind(self, compiled: object) -> StructuredOutputsParams:
        """A copy that carries ``compiled`` (used by the front doors)."""
        bound = attrs.evolve(self)
        object.__setattr__(bound, "_compiled", compiled)
        return bound


def _canonical_schema(node: Any, *, ordered: bool = False) -> Any:
    """``node`` with the keys of every mapping sorted, except those of a ``properties``
    mapping (``ordered``), whose order is meaningful."""
    if isinstance(node, dict):
        items = node.items() if ordered else sorted(node.items())
        return {
            key: _canonical_schema(value, ordered=(key == "properties" and not ordered))
            for key, value in items
        }
    if isinstance(node, list):
        return [_canonical_schema(value) for value in node]
    return node
