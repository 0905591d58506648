"""Regex, choice, EBNF and json_object outputs; bad constraints; n, best_of, stop strings."""

from __future__ import annotations

import json
import re

import pytest

from corral import SamplingParams, StructuredOutputsParams
from corral.llm import LLM
from tests.structured.test_structured_json import assert_compact

REGEXES = [
    r"[a-z]{3,8}@[a-z]{2,5}\.(com|org)",
    r"-?[0-9]{1,4}(\.[0-9]{1,2})?",
    r"(yes|no|maybe)!",
    r"[A-Z][a-z]{1,6} [A-Z][a-z]{1,6}",
    r"\d{3}-\d{4}",
]
GRAMMARS = [
    'root ::= "(" expr ")"\nexpr ::= num | num ("+" | "*") num\nnum ::= [0-9] | [1-9] [0-9]',
    'root ::= item ("," item){0,3}\nitem ::= "a" | "b" | "cd"',
    'root ::= "x"+ "y"?',
]
CHOICES = [["left", "right"], ["Köln", "日本", 'say "hi"'], ["a\\b", "tab\tx", "one"]]


def structured(n: int = 1, seed: int = 0, **kind: object) -> SamplingParams:
    return SamplingParams(
        n=n, seed=seed, max_tokens=64, structured_outputs=StructuredOutputsParams(**kind)
    )


def test_regex_choice_and_grammar_outputs_match(llm: LLM) -> None:
    cases: list[tuple[SamplingParams, object]] = []
    for i, regex in enumerate(REGEXES):
        cases += [(structured(seed=i * 10 + j, regex=regex), re.compile(regex)) for j in range(3)]
    for i, choice in enumerate(CHOICES):
        cases += [(structured(seed=i * 10 + j, choice=choice), set(choice)) for j in range(3)]
    import xgrammar

    for i, grammar in enumerate(GRAMMARS):
        cases += [(structured(seed=i * 10 + j, grammar=grammar), grammar) for j in range(3)]
    outputs = llm.generate(["Say:"] * len(cases), [p for p, _ in cases], use_tqdm=False)
    finished = 0
    for (params, expected), output in zip(cases, outputs, strict=True):
        completion = output.outputs[0]
        if completion.finish_reason != "stop":
            continue
        finished += 1
        text = completion.text
        if isinstance(expected, re.Pattern):
            assert expected.fullmatch(text), (expected.pattern, text)
        elif isinstance(expected, set):
            assert text in expected
        else:
            # The EBNF accepts the text: a fresh matcher over it ends complete.
            assert params.structured_outputs is not None
            matcher = xgrammar.GrammarMatcher(
                llm.engine_core.runner.structured_outputs.compile(params.structured_outputs)
            )
            assert matcher.accept_string(text) and matcher.is_completed(), (expected, text)
    assert finished >= 0.9 * len(cases)


def test_json_object_outputs_are_compact_objects(llm: LLM) -> None:
    params = [
        SamplingParams(
            seed=s, max_tokens=300, structured_outputs=StructuredOutputsParams(json_object=True)
        )
        for s in range(8)
    ]
    outputs = llm.generate(["{"] * 8, params, use_tqdm=False)
    finished = [o.outputs[0].text for o in outputs if o.outputs[0].finish_reason == "stop"]
    # Free-form objects hold unbounded strings: most, not all, end within the limit.
    assert len(finished) >= 4
    for text in finished:
        assert isinstance(json.loads(text), dict)
        assert_compact(text)


def test_n_and_best_of_each_sample_follows_the_grammar(llm: LLM) -> None:
    schema = {
        "type": "object",
        "properties": {"v": {"enum": ["p", "q", "r"]}, "k": {"type": "integer"}},
        "required": ["v", "k"],
    }
    params = SamplingParams(
        n=3,
        best_of=5,
        seed=7,
        max_tokens=80,
        structured_outputs=StructuredOutputsParams(json=schema),
    )
    (output,) = llm.generate(["Pick:"], params, use_tqdm=False)
    assert len(output.outputs) == 3
    texts = {c.text for c in output.outputs}
    for completion in output.outputs:
        assert completion.finish_reason == "stop"
        value = json.loads(completion.text)
        assert value["v"] in "pqr" and isinstance(value["k"], int)
    assert len(texts) > 1


def test_seeded_structured_requests_repeat_exactly(llm: LLM) -> None:
    params = structured(seed=3, regex=r"[a-z]{2,20}")
    first = llm.generate(["a", "bb"], [params, params], use_tqdm=False)
    second = llm.generate(["bb", "a"], [params, params], use_tqdm=False)
    assert first[0].outputs[0].token_ids == second[1].outputs[0].token_ids
    assert first[1].outputs[0].token_ids == second[0].outputs[0].token_ids


def test_a_stop_string_cuts_a_structured_output(llm: LLM) -> None:
    params = SamplingParams(
        seed=1,
        max_tokens=64,
        stop=["b"],
        structured_outputs=StructuredOutputsParams(regex="a{3}b{3}c"),
    )
    (output,) = llm.generate(["x"], params, use_tqdm=False)
    assert output.outputs[0].text == "aaa"
    assert output.outputs[0].stop_reason == "b"


@pytest.mark.parametrize(
    ("kind", "field", "words"),
    [
        ({"json": {"type": "object", "properties": {"a": {"type": "strng"}}}}, "json", "strng"),
        ({"json": {"type": "integer", "minimum": "x"}}, "json", "number"),
        ({"json": {"properties": {"a": {"$ref": "#/$defs/gone"}}}}, "json", "gone"),
        ({"json": {"not": {"type": "string"}}}, "json", "#/not"),
        ({"json": {"allOf": [{"type": "integer"}, {"minimum": 1}]}}, "json", "#/allOf"),
        ({"regex": "[a-"}, "regex", "Unclosed"),
        ({"grammar": 'root ::= "a" |'}, "grammar", "EBNF"),
        ({"grammar": 'start ::= "a"'}, "grammar", "root"),
    ],
)
def test_a_bad_constraint_is_a_value_error_naming_it(
    llm: LLM, kind: dict[str, object], field: str, words: str
) -> None:
    params = SamplingParams(structured_outputs=StructuredOutputsParams(**kind))
    with pytest.raises(ValueError, match=f"structured_outputs.{field}") as info:
        llm.generate(["x", "y"], [SamplingParams(max_tokens=2), params], use_tqdm=False)
    assert words in str(info.value)
    # Nothing was admitted, and the engine keeps serving.
    assert not llm.engine_core.has_unfinished_requests()
    (output,) = llm.generate(["x"], structured(regex="ok"), use_tqdm=False)
    assert output.outputs[0].text == "ok"


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"json": {}, "regex": "a"},
        {"choice": []},
        {"choice": "ab"},
        {"regex": ""},
        {"json": 3},
        {"json": "{not json"},
        {"json_object": "yes"},
    ],
)
def test_structured_outputs_params_are_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="structured_outputs"):
        StructuredOutputsParams(**kwargs)  # type: ignore[arg-type]


def test_ignore_eos_and_min_tokens_are_refused_with_a_grammar() -> None:
    spec = StructuredOutputsParams(regex="a+")
    with pytest.raises(ValueError, match="ignore_eos"):
        SamplingParams(ignore_eos=True, structured_outputs=spec)
    with pytest.raises(ValueError, match="min_tokens"):
        SamplingParams(min_tokens=2, structured_outputs=spec)


def test_equal_schemas_share_one_compiled_grammar(llm: LLM) -> None:
    structured_outputs = llm.engine_core.runner.structured_outputs
    a = StructuredOutputsParams(json={"type": "object", "properties": {"x": {"type": "integer"}}})
    b = StructuredOutputsParams(json='{"properties": {"x": {"type": "integer"}}, "type": "object"}')
    assert a.key == b.key
    assert structured_outputs.compile(a) is structured_outputs.compile(b)


def test_bounded_strings_exclude_control_characters(llm: LLM) -> None:
    import xgrammar

    spec = StructuredOutputsParams(json={"type": "string", "maxLength": 4})
    compiled = llm.engine_core.runner.structured_outputs.compile(spec)
    assert not xgrammar.GrammarMatcher(compiled).accept_string('"a\x1b')
    assert xgrammar.GrammarMatcher(compiled).accept_string('"ab"')


def test_a_grammar_the_vocabulary_cannot_begin_is_a_value_error() -> None:
    import transformers
    from tokenizers import Tokenizer, models

    from corral.model.structured import StructuredOutputs

    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2} | {f"w{i}": i for i in range(3, 40)}
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<pad>")),
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )
    structured_outputs = StructuredOutputs(tokenizer, 40, [1])
    with pytest.raises(ValueError, match="no token of this model's vocabulary"):
        structured_outputs.compile(StructuredOutputsParams(json_object=True))
    assert structured_outputs.compile(StructuredOutputsParams(regex="w1[0-9]")) is not None


def test_objects_keep_the_schema_property_order(llm: LLM) -> None:
    # Property order is the order the keys are written in (OpenAI and vLLM keep it);
    # other keyword order does not matter and shares the compiled grammar.
    properties = {"zeta": {"type": "integer"}, "alpha": {"enum": ["a", "b"]}}
    schema = {"type": "object", "properties": properties, "required": ["zeta", "alpha"]}
    params = [structured(seed=seed, json=schema) for seed in range(4)]
    for output in llm.generate(["{"] * 4, params, use_tqdm=False):
        value = json.loads(output.outputs[0].text)
        assert list(value) == ["zeta", "alpha"], output.outputs[0].text
    shuffled = {"required": ["zeta", "alpha"], "properties": properties, "type": "object"}
    reordered = {**schema, "properties": dict(reversed(properties.items()))}
    key = StructuredOutputsParams(json=schema).key
    assert StructuredOutputsParams(json=shuffled).key == key
    assert StructuredOutputsParams(json=reordered).key != key
