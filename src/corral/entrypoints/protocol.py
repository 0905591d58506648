"""Request bodies of the OpenAI-compatible API, as pydantic models.

Field names and defaults follow OpenAI's API plus vLLM's extra sampling parameters
(``top_k``, ``min_p``, ``repetition_penalty``, ...), so that clients written for vLLM
work unchanged. Unknown fields are rejected (400 naming the field) rather than
silently ignored: a typo in a sampling parameter should not go unnoticed. Fields
that OpenAI defines but corral does not implement yet are accepted only at their
neutral value; anything else is refused with a message saying so.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from corral.sampling_params import RequestOutputKind, SamplingParams
from corral.structured_outputs import StructuredOutputsParams
from corral.tokenization import truncate_prompt

MAX_LOGPROBS = 20
"""Most alternatives per token a request may ask for (vLLM's default ``max_logprobs``)."""

TokenIds = list[Annotated[int, Field(ge=0)]]


class NotImplementedField(ValueError):
    """A request field that OpenAI defines and corral does not implement yet."""

    def __init__(self, field: str, what: str) -> None:
        super().__init__(f"{field}: {what} is not supported yet")
        self.field = field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Strict):
    """``stream_options``: with ``include_usage`` a last chunk carries the usage."""

    include_usage: bool = False


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: a named schema (``strict`` is always honoured:
    the output is generated under the schema's grammar)."""

    name: str
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None


class ResponseFormat(_Strict):
    """``response_format``: plain text, any JSON object, or JSON under a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _check_format(self) -> ResponseFormat:
        if (self.type == "json_schema") != (self.json_schema is not None):
            raise ValueError("response_format: json_schema is given exactly with type json_schema")
        return self


_GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _SamplingRequest(_Strict):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    n: int = 1
    best_of: int | None = None
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: TokenIds | None = None
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0)] = 0
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # OpenAI's: token id strings -> bias, clamped to [-100, 100] as vLLM does.
    logit_bias: dict[str, float] | None = None
    # vLLM's extra sampling fields.
    allowed_token_ids: TokenIds | None = None
    bad_words: list[str] | None = None
    truncate_prompt_tokens: Annotated[int, Field(ge=-1)] | None = None
    response_format: ResponseFormat | None = None
    # vLLM's older structured-output fields.
    guided_json: str | dict[str, Any] | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None

    @model_validator(mode="after")
    def _check_shared(self) -> _SamplingRequest:
        given = [f for f in _GUIDED_FIELDS if getattr(self, f) is not None]
        if self.response_format is not None and self.response_format.type != "text":
            given.insert(0, "response_format")
        if len(given) > 1:
            raise ValueError(f"{given[1]}: only one of {', '.join(given)} may be given")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options: only allowed when stream is true")
        if self.seed is not None and not -(2**63) <= self.seed < 2**64:
            raise ValueError("seed: must fit in 64 bits")
        return self

    @property
    def structured_field(self) -> str | None:
        """The request field that asks for structured output, if any."""
        if self.response_format is not None and self.response_format.type != "text":
            return "response_format"
        return next((f for f in _GUIDED_FIELDS if getattr(self, f) is not None), None)

    def structured_outputs(self) -> StructuredOutputsParams | None:
        """The structured-output constraint the request asks for, None when none.

        Raises:
            ValueError: a malformed constraint, the request field named first.
        """
        field = self.structured_field
        if field is None:
            return None
        try:
            if field == "response_format":
                response_format = self.response_format
                assert response_format is not None
                if response_format.json_schema is None:
                    return StructuredOutputsParams(json_object=True)
                return StructuredOutputsParams(json=response_format.json_schema.schema_)
            kind = field.removeprefix("guided_")
            return StructuredOutputsParams(**{kind: getattr(self, field)})
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from exc

    def truncate(self, prompt_token_ids: list[int], max_model_len: int) -> list[int]:
        """The prompt cut to its last ``truncate_prompt_tokens`` tokens (vLLM's rule).

        Raises:
            ValueError: ``truncate_prompt_tokens`` above ``max_model_len``.
        """
        truncate = self.truncate_prompt_tokens
        if truncate is not None and truncate > max_model_len:
            raise ValueError(
                f"truncate_prompt_tokens value ({truncate}) is greater than max_model_len "
                f"({max_model_len}). Please, select a smaller truncation size."
            )
        return truncate_prompt(prompt_token_ids, truncate, max_model_len)

    @property
    def include_usage(self) -> bool:
        """Whether a stream ends with a usage chunk."""
        return self.stream_options is not None and self.stream_options.include_usage

    def sampling_params(
        self,
        *,
        max_tokens: int,
        default_temperature: float,
        logprobs: int | None,
        prompt_logprobs: int | None = None,
        beam: dict[str, Any] | None = None,
    ) -> SamplingParams:
        """The engine's `SamplingParams` for this request.

        Args:
            max_tokens: The resolved output budget (the request's, or what the context
                leaves when it gave none).
            default_temperature: Temperature when the request gives none.
            logprobs: Alternatives per generated token, None for no logprobs.
            prompt_logprobs: Alternatives per prompt token (for ``echo``), None for none.
            beam: Beam-search fields to pass on (``use_beam_search``, ``length_penalty``,
                ``early_stopping``); only those the request set.

        Raises:
            ValueError: A value out of range; the message starts with the field's name.
            NotSupportedError: A feature the engine does not have (answered 400).
        """
        temperature = default_temperature if self.temperature is None else self.temperature
        # SamplingParams resolves an absent best_of to n; None is not a value it takes.
        best_of: dict[str, Any] = {} if self.best_of is None else {"best_of": self.best_of}
        return SamplingParams(
            n=self.n,
            **best_of,
            presence_penalty=_or(self.presence_penalty, 0.0),
            frequency_penalty=_or(self.frequency_penalty, 0.0),
            repetition_penalty=_or(self.repetition_penalty, 1.0),
            temperature=temperature,
            top_p=_or(self.top_p, 1.0),
            top_k=_or(self.top_k, -1),
            min_p=_or(self.min_p, 0.0),
            seed=self.seed,
            stop=self.stop,
            stop_token_ids=self.stop_token_ids,
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            max_tokens=max_tokens,
            min_tokens=self.min_tokens,
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            spaces_between_special_tokens=self.spaces_between_special_tokens,
            structured_outputs=self.structured_outputs(),
            logit_bias=self.logit_bias,
            allowed_token_ids=self.allowed_token_ids,
            bad_words=self.bad_words,
            truncate_prompt_tokens=self.truncate_prompt_tokens,
            **(beam or {}),
            # A stream is built from deltas (see entrypoints/assembly.py).
            output_kind=RequestOutputKind.DELTA if self.stream else RequestOutputKind.CUMULATIVE,
        )


def _or(value: Any, default: Any) -> Any:
    return default if value is None else value


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions``.

    ``prompt`` is a string, a list of strings, a list of token ids or a list of
    lists of token ids; each prompt becomes one engine request with ``n`` choices,
    choice ``i`` of prompt ``p`` getting index ``p * n + i``.
    """

    prompt: str | Annotated[list[str], Field(min_length=1)] | TokenIds | list[TokenIds]
    # 0 only with echo: the legacy way to score a prompt (see `scoring_only`).
    max_tokens: Annotated[int, Field(ge=0)] | None = 16
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    suffix: str | None = None
    # vLLM's beam-search fields (the seed era's form).
    use_beam_search: bool = False
    length_penalty: float = 1.0
    early_stopping: bool | Literal["never"] = False

    @model_validator(mode="after")
    def _check_completion(self) -> CompletionRequest:
        if self.suffix:
            raise NotImplementedField("suffix", "inserting a suffix")
        if self.max_tokens == 0 and not self.echo:
            raise ValueError(
                "max_tokens: 0 generates nothing, so it is only allowed with echo=true "
                "(which scores the prompt: the echoed prompt with its logprobs)"
            )
        if self.max_tokens == 0 and self.n != 1:
            raise ValueError("n: scoring a prompt (max_tokens 0 with echo) needs n=1")
        if self.use_beam_search and self.stream:
            raise ValueError(
                "use_beam_search: streaming is not supported with beam search (the beams are "
                "only final at the end); send stream=false"
            )
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt: must not be empty")
        if isinstance(self.prompt, list) and any(
            isinstance(p, list) and not p for p in self.prompt
        ):
            raise ValueError("prompt: a token id list must not be empty")
        return self

    @property
    def scoring_only(self) -> bool:
        """``max_tokens: 0`` with ``echo``: the prompt's logprobs, nothing generated."""
        return self.max_tokens == 0

    def beam_fields(self) -> dict[str, Any]:
        """The beam-search fields the request set, for `sampling_params` (which
        checks them: ``length_penalty`` or ``early_stopping`` without beam search is a
        400)."""
        fields: dict[str, Any] = {}
        if self.use_beam_search:
            fields["use_beam_search"] = True
        if self.length_penalty != 1.0:
            fields["length_penalty"] = self.length_penalty
        if self.early_stopping is not False:
            fields["early_stopping"] = self.early_stopping
        return fields

    def prompts(self) -> list[str | list[int]]:
        """The prompts as separate items: strings or token id lists."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if all(isinstance(p, int) for p in prompt):
            return [list(prompt)]  # type: ignore[arg-type]
        return list(prompt)  # type: ignore[arg-type]


class TextContent(_Strict):
    """A text part of a message's content."""

    type: Literal["text"]
    text: str


class FunctionCallIn(_Strict):
    """The function an earlier assistant turn called: ``arguments`` is JSON text."""

    name: str
    arguments: str


class ToolCallIn(_Strict):
    """A tool call of an earlier assistant turn."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ChatMessage(_Strict):
    """One message of a conversation. An assistant turn may carry ``tool_calls``
    (its content may then be null); a ``tool`` message answers the call
    ``tool_call_id`` with the tool's result."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextContent] | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _check_content(self) -> ChatMessage:
        if self.content is None and self.role != "assistant":
            raise ValueError(f"content: required for a {self.role} message")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"tool_calls: only assistant messages make calls, not {self.role}")
        if (self.tool_call_id is not None) != (self.role == "tool"):
            raise ValueError("tool_call_id: required for a tool message, and only there")
        return self

    def text(self) -> str:
        """The content as plain text (text parts joined)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class FunctionDefinition(_Strict):
    """A function the model may call; ``parameters`` is the JSON schema of its
    arguments (an object; none means no arguments)."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ChatTool(_Strict):
    """An entry of ``tools``."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(_Strict):
    """``tool_choice: {"type": "function", "function": {"name": ...}}``."""

    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``. The prompt is the tokenizer's chat template
    applied to ``messages`` (with the generation prompt unless
    ``add_generation_prompt`` is false)."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    add_generation_prompt: bool = True
    tools: list[ChatTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    @model_validator(mode="after")
    def _check_chat(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs: only allowed when logprobs is true")
        self._check_tools()
        return self

    def _check_tools(self) -> None:
        names = set()
        for tool in self.tools or []:
            function = tool.function
            if not _FUNCTION_NAME.match(function.name):
                raise ValueError(
                    f"tools: function name {function.name!r} must be 1 to 64 letters, "
                    "digits, underscores or dashes"
                )
            if function.name in names:
                raise ValueError(f"tools: function {function.name!r} is defined twice")
            names.add(function.name)
            kind = (function.parameters or {}).get("type", "object")
            if kind != "object":
                raise ValueError(
                    f"tools: the parameters of function {function.name!r} must be a JSON "
                    f"schema of type 'object', got type {kind!r}"
                )
        choice = self.tool_choice
        if choice is not None and choice != "none" and not self.tools:
            raise ValueError("tool_choice: only allowed when tools are given")
        if isinstance(choice, NamedToolChoice) and choice.function.name not in names:
            raise ValueError(
                f"tool_choice: function {choice.function.name!r} is not among the tools "
                f"({', '.join(sorted(names))})"
            )
        if self.forced_tool_choice and self.structured_field is not None:
            raise ValueError(
                f"tool_choice: a required or named tool choice cannot be combined with "
                f"{self.structured_field}"
            )

    @property
    def effective_tool_choice(self) -> str | NamedToolChoice:
        """``tool_choice``, defaulting as OpenAI does: "auto" with tools, else "none"."""
        if self.tool_choice is not None:
            return self.tool_choice
        return "auto" if self.tools else "none"

    @property
    def forced_tool_choice(self) -> bool:
        """Whether generation is constrained to tool calls ("required" or named)."""
        return self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice)

    @property
    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (OpenAI's newer name) or else ``max_tokens``."""
        if self.max_completion_tokens is not None:
            return self.max_completion_tokens
        return self.max_tokens

    @property
    def num_logprobs(self) -> int | None:
        """Alternatives per token for the engine, None when logprobs are off."""
        if not self.logprobs:
            return None
        return self.top_logprobs or 0


class TokenizeRequest(_Strict):
    """``POST /tokenize``: either ``prompt`` or chat ``messages`` (with the ``tools``
    the chat template is shown)."""

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ChatTool] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True

    @model_validator(mode="after")
    def _one_input(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("prompt: give exactly one of prompt and messages")
        if self.tools is not None and self.messages is None:
            raise ValueError("tools: only allowed with messages")
        return self


class DetokenizeRequest(_Strict):
    """``POST /detokenize``."""

    model: str | None = None
    tokens: TokenIds
