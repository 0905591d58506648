"""The official ``openai`` client, sync and async, against a real ``corral serve`` process."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.server.server_helpers import SERVED_NAME, ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0) as client:
        yield client


GREEDY = {"temperature": 0.0, "max_tokens": 12, "extra_body": {"ignore_eos": True}}


def test_models_list_shows_the_served_name(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list().data] == [SERVED_NAME]


def test_completion_has_text_and_usage(client: openai.OpenAI) -> None:
    result = client.completions.create(model=SERVED_NAME, prompt="Once upon a time", **GREEDY)
    choice = result.choices[0]
    assert choice.finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 12
    assert result.usage.total_tokens == result.usage.prompt_tokens + 12
    assert (
        choice.text
        == client.completions.create(model=SERVED_NAME, prompt="Once upon a time", **GREEDY)
        .choices[0]
        .text
    )


def test_streamed_completion_equals_the_whole_one(client: openai.OpenAI) -> None:
    whole = client.completions.create(model=SERVED_NAME, prompt="The quick brown", **GREEDY)
    stream = client.completions.create(
        model=SERVED_NAME,
        prompt="The quick brown",
        stream=True,
        stream_options={"include_usage": True},
        **GREEDY,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.model_dump() == whole.usage.model_dump()  # type: ignore[union-attr]


def test_streamed_chat_equals_the_whole_one(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Tell me a story"}]
    whole = client.chat.completions.create(model=SERVED_NAME, messages=messages, **GREEDY)  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model=SERVED_NAME, messages=messages, stream=True, **GREEDY
    )  # type: ignore[arg-type]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason == "length"


def test_n_samples_are_separate_choices(client: openai.OpenAI) -> None:
    result = client.completions.create(
        model=SERVED_NAME, prompt="Once", n=2, max_tokens=8, seed=3, extra_body={"ignore_eos": True}
    )
    assert sorted(c.index for c in result.choices) == [0, 1]
    assert result.usage is not None and result.usage.completion_tokens == 16
    chat = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "hi"}],
        n=2,
        max_tokens=4,
        extra_body={"ignore_eos": True},
    )
    assert sorted(c.index for c in chat.choices) == [0, 1]


def test_logprobs_cover_every_token(client: openai.OpenAI) -> None:
    result = client.completions.create(model=SERVED_NAME, prompt="Once", logprobs=2, **GREEDY)
    logprobs = result.choices[0].logprobs
    assert (
        logprobs is not None
        and logprobs.token_logprobs is not None
        and logprobs.top_logprobs is not None
    )
    assert len(logprobs.token_logprobs) == 12
    # Greedy: the chosen token is the most likely one.
    for chosen, top in zip(logprobs.token_logprobs, logprobs.top_logprobs, strict=True):
        assert chosen is not None and chosen <= 0
        assert max(top.values()) == pytest.approx(chosen)
    chat = client.chat.completions.create(
        model=SERVED_NAME,
        messages=[{"role": "user", "content": "hi"}],
        logprobs=True,
        top_logprobs=3,
        **GREEDY,  # type: ignore[arg-type]
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == 12
    assert all(len(t.top_logprobs) == 3 and t.logprob == t.top_logprobs[0].logprob for t in content)


def test_stop_string_cuts_the_text(client: openai.OpenAI) -> None:
    whole = (
        client.completions.create(model=SERVED_NAME, prompt="Once upon a time", **GREEDY)
        .choices[0]
        .text
    )
    # A plain two-character window: random weights also emit bytes that are not UTF-8.
    starts = [
        i
        for i in range(2, len(whole) - 1)
        if whole[i : i + 2].isascii() and whole[i : i + 2].isprintable()
    ]
    assert starts, f"no ASCII window in the greedy text to stop at: {whole!r}"
    stop = whole[starts[0] : starts[0] + 2]
    cut = client.completions.create(
        model=SERVED_NAME, prompt="Once upon a time", stop=[stop], **GREEDY
    )
    choice = cut.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.text == whole[: whole.index(stop)]


def test_errors_arrive_as_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="no-such-model", prompt="x")
    with pytest.raises(openai.BadRequestError, match="top_p"):
        client.completions.create(model=SERVED_NAME, prompt="x", top_p=3.0)


@pytest.mark.anyio
# openai's AsyncStream stops at "[DONE]" without exhausting its (and httpx2's) inner
# async generators; trio's finalizer warns about them at garbage collection. A
# client-library matter, not the server's.
@pytest.mark.filterwarnings("ignore:Async generator:ResourceWarning")
async def test_async_client_streams_chat(server: ServerProcess) -> None:
    client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    async with client:
        stream = await client.chat.completions.create(
            model=SERVED_NAME,
            messages=[{"role": "user", "content": "hello"}],
            stream=True,
            **GREEDY,  # type: ignore[arg-type]
        )
        parts = [c.choices[0].delta.content or "" async for c in stream]
        whole = await client.chat.completions.create(
            model=SERVED_NAME,
            messages=[{"role": "user", "content": "hello"}],
            **GREEDY,  # type: ignore[arg-type]
        )
    assert "".join(parts) == whole.choices[0].message.content
