"""Beam search's API: validation (vLLM 0.4's rules and messages), `LLM.beam_search`,
and the async engine, which gives a beam search request its final output only."""

from __future__ import annotations

from typing import Any

import anyio
import pytest

from corral import BeamSearchOutput, BeamSearchParams, NotSupportedError, RequestOutputKind
from corral.async_llm_engine import AsyncLLMEngine
from corral.config import AsyncEngineArgs
from corral.engine import open_engine
from corral.outputs import RequestOutput
from corral.sampling_params import SamplingParams
from corral.structured_outputs import StructuredOutputsParams
from tests.beam.helpers import assert_same_beams, hypotheses
from tests.docs.doc_blocks import tagged
from tests.model.zoo import ModelZoo

BEAM = {"use_beam_search": True, "best_of": 3, "n": 2, "temperature": 0.0, "max_tokens": 8}


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"best_of": 1, "n": 1}, "best_of must be greater than 1 when using beam search. Got 1."),
        ({"temperature": 0.7}, "temperature must be 0 when using beam search."),
        ({"top_p": 0.9}, "top_p must be 1 when using beam search."),
        ({"top_k": 5}, "top_k must be -1 when using beam search."),
        ({"min_p": 0.1}, "min_p must be 0 when using beam search."),
        ({"early_stopping": "sometimes"}, "early_stopping must be True, False, or 'never'"),
        ({"n": 4}, "best_of must be at least n=4"),
    ],
)
def test_beam_search_params_are_validated(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.").replace("(", r"\(")):
        SamplingParams(**{**BEAM, **changes})


def test_beam_search_temperature_defaults_like_the_seed() -> None:
    """As in vLLM 0.4, the default temperature (1.0) must be set to 0 explicitly."""
    with pytest.raises(ValueError, match="temperature must be 0 when using beam search"):
        SamplingParams(use_beam_search=True, best_of=2)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"early_stopping": True}, "early_stopping is not effective and must be False"),
        ({"length_penalty": 0.5}, "length_penalty is not effective and must be the default"),
    ],
)
def test_beam_fields_without_beam_search_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SamplingParams(**changes)


@pytest.mark.parametrize(
    "changes",
    [{"stop": ["x"]}, {"structured_outputs": StructuredOutputsParams(choice=["a", "b"])}],
    ids=["stop-strings", "structured-outputs"],
)
def test_unsupported_combinations_say_so(changes: dict[str, Any]) -> None:
    with pytest.raises(NotSupportedError, match="not supported with beam search"):
        SamplingParams(**{**BEAM, **changes})


def test_a_beam_group_too_large_for_the_cache_is_refused_up_front(beam_zoo: ModelZoo) -> None:
    llm = beam_zoo.llm("llama", block_size=4, num_kv_blocks=24, max_model_len=64)
    params = SamplingParams(**{**BEAM, "best_of": 4, "max_tokens": 40})
    with pytest.raises(ValueError, match=r"beam search: 4 beams of up to .* need up to"):
        llm.generate(["The quick brown fox"], params, use_tqdm=False)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beam_width": 1, "max_tokens": 4}, "beam_width must be at least 2"),
        ({"beam_width": 2, "max_tokens": 0}, "max_tokens must be at least 1"),
    ],
)
def test_beam_search_params_validate(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BeamSearchParams(**kwargs)


def test_llm_beam_search_is_the_engine_beam_search(beam_zoo: ModelZoo) -> None:
    llm = beam_zoo.llm("llama")
    tokenizer = beam_zoo.tokenizer
    prompts: list[Any] = [
        "The quick brown fox",
        {"prompt_token_ids": tokenizer.encode("def add(a, b):")},
    ]
    params = BeamSearchParams(beam_width=3, max_tokens=8, length_penalty=0.5)
    results = llm.beam_search(prompts, params)
    assert all(isinstance(r, BeamSearchOutput) for r in results)
    sampling = SamplingParams(**{**BEAM, "n": 3, "length_penalty": 0.5, "early_stopping": "never"})
    expected = llm.generate(
        prompt_token_ids=[tokenizer.encode("The quick brown fox"), prompts[1]["prompt_token_ids"]],
        sampling_params=sampling,
        use_tqdm=False,
    )
    for result, want in zip(results, expected, strict=True):
        assert len(result.sequences) == 3
        got = [
            (
                tuple(s.tokens[len(want.prompt_token_ids) :]),
                s.cum_logprob / (len(s.tokens) - len(want.prompt_token_ids)) ** 0.5,
            )
            for s in result.sequences
        ]
        assert_same_beams(hypotheses(want, 0.5), got, context=str(want.prompt_token_ids))
        for sequence, completion in zip(result.sequences, want.outputs, strict=True):
            assert sequence.tokens[: len(want.prompt_token_ids)] == want.prompt_token_ids
            assert sequence.text == completion.text
            assert sequence.finish_reason == completion.finish_reason
    assert llm.beam_search([], params) == []


def test_llm_beam_search_refuses_sampled_beams(beam_zoo: ModelZoo) -> None:
    with pytest.raises(NotSupportedError, match="temperature"):
        beam_zoo.llm("llama").beam_search(
            ["x"], BeamSearchParams(beam_width=2, max_tokens=2, temperature=0.5)
        )


@pytest.mark.anyio
@pytest.mark.parametrize("kind", list(RequestOutputKind), ids=lambda k: k.name)
async def test_async_engine_gives_beam_search_its_final_output_only(
    beam_zoo: ModelZoo, kind: RequestOutputKind
) -> None:
    params = SamplingParams(**{**BEAM, "output_kind": kind})
    (want,) = beam_zoo.llm("llama").generate(["The quick brown fox"], params, use_tqdm=False)
    seen: list[RequestOutput] = []
    with anyio.fail_after(60):
        async with open_engine(
            model=str(beam_zoo.path("llama")),
            dtype="float32",
            num_kv_blocks=256,
            max_model_len=512,
            log_requests=False,
        ) as engine:
            async with engine.generate("The quick brown fox", params, "beam") as stream:
                async for out in stream:
                    seen.append(out)
    assert len(seen) == 1 and seen[0].finished
    assert_same_beams(hypotheses(want, 1.0), hypotheses(seen[0], 1.0), context=kind.name)
    assert [c.text for c in seen[0].outputs] == [c.text for c in want.outputs]


def test_an_aborted_beam_search_ends_with_its_live_beams_and_frees_them(
    beam_zoo: ModelZoo,
) -> None:
    core = beam_zoo.llm("llama").engine_core
    prompt = beam_zoo.tokenizer.encode("The quick brown fox")
    core.add_request("aborted", prompt, SamplingParams(**{**BEAM, "max_tokens": 20}))
    for _ in range(4):
        assert core.step() == []  # a beam search outputs nothing until it ends
    core.abort_request("aborted")
    (output,) = core.step()
    assert output.finished and len(output.outputs) == BEAM["n"]
    assert {c.finish_reason for c in output.outputs} == {"abort"}
    assert all(len(c.token_ids) == 4 for c in output.outputs)  # one per step
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not core.has_unfinished_requests()


def test_the_docs_example_runs(beam_zoo: ModelZoo, capsys: pytest.CaptureFixture[str]) -> None:
    block = tagged("beam_search.md")["fragment"]
    namespace = {
        "llm": beam_zoo.llm("llama"),
        "SamplingParams": SamplingParams,
        "BeamSearchParams": BeamSearchParams,
    }
    exec(compile(block.code, f"docs/beam_search.md:{block.line}", "exec"), namespace)
    assert len(namespace["outputs"][0].outputs) == 2
    assert len(capsys.readouterr().out.splitlines()) >= 4


@pytest.mark.anyio
@pytest.mark.parametrize("front_door", ["AsyncEngine", "AsyncLLMEngine"])
async def test_async_engine_beam_search_yields_the_final_beams(
    beam_zoo: ModelZoo, front_door: str
) -> None:
    params = BeamSearchParams(beam_width=3, max_tokens=8)
    (want,) = beam_zoo.llm("llama").beam_search(["The quick brown fox"], params)
    seen: list[RequestOutput] = []
    args = AsyncEngineArgs(
        model=str(beam_zoo.path("llama")),
        dtype="float32",
        num_kv_blocks=256,
        max_model_len=512,
        log_requests=False,
    )
    opened: Any = (
        AsyncLLMEngine.from_engine_args(args)
        if front_door == "AsyncLLMEngine"
        else open_engine(args)
    )
    with anyio.fail_after(60):
        async with opened as engine:
            async with engine.beam_search("The quick brown fox", "b", params) as stream:
                async for out in stream:
                    seen.append(out)
            with pytest.raises(NotSupportedError, match="temperature"):
                engine.beam_search(
                    "x", None, BeamSearchParams(beam_width=2, max_tokens=2, temperature=1.0)
                )
    assert len(seen) == 1 and seen[0].finished
    prompt_len = len(seen[0].prompt_token_ids)
    expected = [
        (tuple(s.tokens[prompt_len:]), s.cum_logprob / (len(s.tokens) - prompt_len))
        for s in want.sequences
    ]
    assert_same_beams(expected, hypotheses(seen[0], 1.0), context="async beam_search")


def test_beams_share_the_prompt_blocks_and_copy_on_write(beam_zoo: ModelZoo) -> None:
    core = beam_zoo.llm("llama", block_size=4).engine_core
    prompt = beam_zoo.tokenizer.encode("The quick brown fox jumps over the lazy dog.")
    assert len(prompt) % 4 != 0  # the last prompt block is partial, so shared and written
    core.add_request("shared", prompt, SamplingParams(**{**BEAM, "best_of": 4, "max_tokens": 6}))
    core.step()  # the prompt, then the first beam step forks it
    beams = core._requests["shared"].seqs
    assert len(beams) == 4
    num_full = len(prompt) // 4
    tables = [beam.block_table for beam in beams]
    full_blocks = {tuple(table[:num_full]) for table in tables}
    assert len(full_blocks) == 1
    ref_counts = core.kv.pool.ref_counts
    assert all(ref_counts[block] == 4 for block in tables[0][:num_full])
    core.step()  # each beam writes its token into the shared partial block: copies
    beams = core._requests["shared"].seqs
    assert all(ref_counts[block] == 4 for block in tables[0][:num_full])
    # Beams share the partial block exactly when they wrote the same token into it
    # (a beam forked from another after the write shares its copy).
    partial = {(beam.token_ids[len(prompt)], beam.block_table[num_full]) for beam in beams}
    assert len({token for token, _ in partial}) == len({block for _, block in partial})
    assert len(partial) == len({token for token, _ in partial})
    while core.has_unfinished_requests():
        core.step()
    stats = core.stats()
    assert stats.num_free_blocks == stats.num_total_blocks
