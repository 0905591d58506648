"""The server's token-constraint fields (``logit_bias``, vLLM's ``allowed_token_ids``,
``bad_words``, ``truncate_prompt_tokens``), its 400s, and scoring a prompt with
``max_tokens: 0`` and ``echo`` through the official ``openai`` client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from corral.llm import LLM
from corral.sampling_params import SamplingParams
from tests.server.server_helpers import MAX_MODEL_LEN, SERVED_NAME, ServerProcess, open_app
from tests.server.test_server_app import assert_error, sse_events

GREEDY = {"temperature": 0, "max_tokens": 5, "ignore_eos": True}
CHAT = [{"role": "user", "content": "Tell me a story"}]


@pytest.mark.anyio
async def test_fields_shape_completions_and_chat(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        prompt_ids = (await client.post("/tokenize", json={"prompt": "Once upon"})).json()["tokens"]
        forced = await client.post(
            "/v1/completions", json={**GREEDY, "prompt": prompt_ids, "logit_bias": {"7": 100}}
        )
        assert forced.json()["usage"]["completion_tokens"] == 5
        text = forced.json()["choices"][0]["text"]
        token_7 = (await client.post("/detokenize", json={"tokens": [7]})).json()["prompt"]
        assert text == token_7 * 5
        chat = await client.post(
            "/v1/chat/completions", json={**GREEDY, "messages": CHAT, "logit_bias": {"7": 100}}
        )
        assert chat.json()["choices"][0]["message"]["content"] == token_7 * 5
        allowed = await client.post(
            "/v1/completions",
            json={**GREEDY, "prompt": prompt_ids, "allowed_token_ids": [7], "temperature": 1},
        )
        assert allowed.json()["choices"][0]["text"] == token_7 * 5
        banned = await client.post(
            "/v1/completions",
            json={**GREEDY, "prompt": prompt_ids, "logit_bias": {"7": 100}, "bad_words": [token_7]},
        )
        assert token_7 not in banned.json()["choices"][0]["text"]
        truncated = await client.post(
            "/v1/completions",
            json={**GREEDY, "prompt": list(range(3, 50)), "truncate_prompt_tokens": 4},
        )
        assert truncated.json()["usage"]["prompt_tokens"] == 4
        direct = await client.post(
            "/v1/completions", json={**GREEDY, "prompt": list(range(46, 50))}
        )
        assert truncated.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"]


BAD_FIELDS: list[tuple[dict[str, Any], str | None, str]] = [
    ({"logit_bias": {"x": 1}}, None, "cannot be converted to integer token IDs"),
    ({"logit_bias": {"99999": 1}}, None, "in logit_bias contain out-of-vocab token ids"),
    ({"allowed_token_ids": []}, None, "allowed_token_ids is not None and empty!"),
    ({"allowed_token_ids": [99999]}, None, "allowed_token_ids contains out-of-vocab"),
    ({"bad_words": [""]}, None, "bad_words cannot contain an empty string"),
    ({"truncate_prompt_tokens": -2}, "truncate_prompt_tokens", "greater than or equal to -1"),
    ({"truncate_prompt_tokens": MAX_MODEL_LEN + 1}, None, "greater than max_model_len"),
    ({"max_tokens": 0}, "max_tokens", "only allowed with echo=true"),
    ({"max_tokens": 0, "echo": True, "n": 2}, "n", "scoring a prompt"),
    ({"use_beam_search": True, "stream": True}, "use_beam_search", "streaming is not supp"),
]


@pytest.mark.anyio
async def test_bad_fields_are_400_and_the_engine_keeps_serving(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        for body, param, text in BAD_FIELDS:
            response = await client.post("/v1/completions", json={"prompt": "Once", **body})
            assert_error(response, 400, param, text)
        ok = await client.post("/v1/completions", json={"prompt": "Once", "max_tokens": 2})
        assert ok.status_code == 200
        response = await client.post(
            "/v1/completions", json={"prompt": "Once", "length_penalty": 2.0}
        )
        # Refused without beam search, whether or not this build has beam search.
        assert response.status_code == 400
        assert "length_penalty" in response.json()["error"]["message"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


def test_echo_with_max_tokens_zero_scores_the_prompt(
    client: openai.OpenAI, tiny_model: Path
) -> None:
    prompt = "The quick brown fox jumps over the lazy dog."
    result = client.completions.create(
        model=SERVED_NAME, prompt=prompt, max_tokens=0, echo=True, logprobs=1
    )
    choice = result.choices[0]
    assert choice.text == prompt
    assert choice.finish_reason == "length"
    assert result.usage is not None and result.usage.completion_tokens == 0
    assert choice.logprobs is not None
    served = choice.logprobs.token_logprobs
    assert served is not None and served[0] is None
    llm = LLM(str(tiny_model), dtype="float32", max_model_len=MAX_MODEL_LEN, num_kv_blocks=64)
    offline = llm.generate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=1), use_tqdm=False)
    expected = offline[0].prompt_logprobs
    token_ids = offline[0].prompt_token_ids
    assert expected is not None and len(served) == len(token_ids) == result.usage.prompt_tokens
    for logprob, entry, token in zip(served[1:], expected[1:], token_ids[1:], strict=True):
        assert entry is not None and logprob is not None
        # Another process, another batch: equal up to matmul rounding.
        assert logprob == pytest.approx(entry[token], abs=1e-4)


def test_echo_with_max_tokens_zero_without_logprobs_echoes_only(client: openai.OpenAI) -> None:
    result = client.completions.create(model=SERVED_NAME, prompt="Once", max_tokens=0, echo=True)
    assert result.choices[0].text == "Once"
    assert result.choices[0].logprobs is None


@pytest.mark.anyio
async def test_streamed_scoring_equals_the_whole_answer(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        body = {"prompt": "Once upon a time", "max_tokens": 0, "echo": True, "logprobs": 2}
        whole = (await client.post("/v1/completions", json=body)).json()["choices"][0]
        streamed = await client.post("/v1/completions", json={**body, "stream": True})
        events = sse_events(streamed.text)
        assert events[-1] == "[DONE]"
        chunks = [e["choices"][0] for e in events[:-1]]
        assert "".join(c["text"] for c in chunks) == whole["text"] == "Once upon a time"
        tokens = [t for c in chunks if c["logprobs"] for t in c["logprobs"]["tokens"]]
        logprobs = [lp for c in chunks if c["logprobs"] for lp in c["logprobs"]["token_logprobs"]]
        assert tokens == whole["logprobs"]["tokens"]
        assert logprobs == whole["logprobs"]["token_logprobs"]
        assert chunks[-1]["finish_reason"] == "length"


@pytest.mark.anyio
async def test_use_beam_search_reaches_the_sampling_params(tiny_model: Path) -> None:
    async with open_app(tiny_model) as (client, _):
        body = {"prompt": "Once", "max_tokens": 3, "temperature": 0, "best_of": 2}
        response = await client.post("/v1/completions", json={**body, "use_beam_search": True})
        assert response.status_code == 200, response.text
        assert len(response.json()["choices"]) == 1
        response = await client.post(
            "/v1/completions",
            json={**body, "n": 2, "use_beam_search": True, "length_penalty": 0.5},
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["choices"]) == 2
        # Beam search needs temperature 0: SamplingParams' message, as a 400.
        response = await client.post(
            "/v1/completions", json={**body, "temperature": 1.0, "use_beam_search": True}
        )
        assert response.status_code == 400
        assert "temperature must be 0" in response.json()["error"]["message"]
