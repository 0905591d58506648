"""The server with LoRA: the ``openai`` client selects adapters by model name; the load and
unload endpoints; bad adapters answered 400; per-adapter metrics. A real ``corral serve``."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx2
import openai
import peft
import pytest
import torch
import transformers

from tests.server.server_helpers import SERVED_NAME, ServerProcess, build_tiny_model, open_app

GREEDY = {"temperature": 0.0, "max_tokens": 8, "extra_body": {"ignore_eos": True}}
PROMPT = "Once upon a time"


def make_adapter(model: Path, folder: Path, *, r: int, seed: int) -> Path:
    """A PEFT adapter with non-zero random weights on every projection of ``model``."""
    base = transformers.AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    config = peft.LoraConfig(
        r=r,
        lora_alpha=2 * r,
        target_modules=[
            "q_proj",
            "k_proj",
            "v_proj",
            "o_proj",
            "gate_proj",
            "up_proj",
            "down_proj",
        ],
        init_lora_weights=False,
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = peft.get_peft_model(base, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def lora_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("lora-tiny-llama")
    build_tiny_model(folder)
    return folder


@pytest.fixture(scope="module")
def adapter_dirs(lora_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("server-adapters")
    return {
        "sql": make_adapter(lora_model, root / "sql", r=4, seed=1),
        "poem": make_adapter(lora_model, root / "poem", r=8, seed=2),
        "huge": make_adapter(lora_model, root / "huge", r=32, seed=3),
    }


@pytest.fixture(scope="module")
def lora_server(lora_model: Path, adapter_dirs: dict[str, Path]) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        lora_model,
        "--enable-lora", "--max-loras", "2", "--max-lora-rank", "8",
        "--lora-modules", f"sql={adapter_dirs['sql']}",
        "--allow-runtime-lora-updating",
    )  # fmt: skip
    try:
        proc.wait_ready()
        yield proc
    finally:
        code = proc.stop()
    assert code == 0, proc.output()


@pytest.fixture(scope="module")
def client(lora_server: ServerProcess) -> Iterator[openai.OpenAI]:
    url = f"{lora_server.url}/v1"
    with openai.OpenAI(base_url=url, api_key="unused", max_retries=0) as client:
        yield client


def post(server: ServerProcess, path: str, body: dict[str, object]) -> httpx2.Response:
    return httpx2.post(f"{server.url}{path}", json=body, timeout=60)


def complete(client: openai.OpenAI, model: str) -> str:
    return client.completions.create(model=model, prompt=PROMPT, **GREEDY).choices[0].text  # type: ignore[arg-type]


def test_models_lists_adapters_with_the_base_as_parent(
    client: openai.OpenAI, adapter_dirs: dict[str, Path]
) -> None:
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert cards["sql"]["parent"] == SERVED_NAME
    assert cards["sql"]["root"] == str(adapter_dirs["sql"])
    assert cards[SERVED_NAME]["parent"] is None


def test_model_field_selects_the_adapter(client: openai.OpenAI) -> None:
    base = complete(client, SERVED_NAME)
    sql = complete(client, "sql")
    assert sql != base
    assert complete(client, "sql") == sql
    chat = client.chat.completions.create(
        model="sql",
        messages=[{"role": "user", "content": "hi"}],
        **GREEDY,  # type: ignore[arg-type]
    )
    assert chat.choices[0].message.content is not None


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        complete(client, "nope")


def test_load_then_unload_an_adapter(
    client: openai.OpenAI, lora_server: ServerProcess, adapter_dirs: dict[str, Path]
) -> None:
    loaded = post(
        lora_server,
        "/v1/load_lora_adapter",
        {"lora_name": "poem", "lora_path": str(adapter_dirs["poem"])},
    )
    assert loaded.status_code == 200, loaded.text
    assert "poem" in {m.id for m in client.models.list().data}
    poem = complete(client, "poem")
    assert poem != complete(client, "sql")
    assert post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "poem"}).status_code == 200
    assert "poem" not in {m.id for m in client.models.list().data}
    with pytest.raises(openai.NotFoundError):
        complete(client, "poem")
    assert post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "poem"}).status_code == 404


def test_unloading_lets_requests_in_flight_finish(
    client: openai.OpenAI, lora_server: ServerProcess, adapter_dirs: dict[str, Path]
) -> None:
    body = {"lora_name": "late", "lora_path": str(adapter_dirs["poem"])}
    assert post(lora_server, "/v1/load_lora_adapter", body).status_code == 200
    stream = client.completions.create(
        model="late", prompt=PROMPT, stream=True, temperature=0.0, max_tokens=64,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = [next(iter(stream))]
    assert post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "late"}).status_code == 200
    chunks += list(stream)
    assert chunks[-1].choices[0].finish_reason == "length"
    with pytest.raises(openai.NotFoundError):
        complete(client, "late")


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "lora_path is not a folder"),
        ("huge", "rank 32 exceeds max_lora_rank=8"),
        ("taken", "already served"),
    ],
)
def test_bad_adapters_are_400(
    lora_server: ServerProcess, adapter_dirs: dict[str, Path], case: str, message: str
) -> None:
    body = {
        "missing": {"lora_name": "m", "lora_path": "/nonexistent"},
        "huge": {"lora_name": "h", "lora_path": str(adapter_dirs["huge"])},
        "taken": {"lora_name": "sql", "lora_path": str(adapter_dirs["poem"])},
    }[case]
    response = post(lora_server, "/v1/load_lora_adapter", body)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_metrics_report_requests_per_adapter(
    client: openai.OpenAI, lora_server: ServerProcess
) -> None:
    complete(client, "sql")
    text = httpx2.get(f"{lora_server.url}/metrics", timeout=10).text
    assert 'corral:lora_requests_info{max_lora="2"' in text
    assert 'corral:lora_requests_running{lora_name="sql",model_name="tiny-llama"} 0.0' in text
    assert "corral:lora_requests_waiting" in text


@pytest.mark.anyio
async def test_adapter_endpoints_need_allow_runtime_lora_updating(lora_model: Path) -> None:
    async with open_app(lora_model) as (client, _):
        body = {"lora_name": "x", "lora_path": "/nonexistent"}
        assert (await client.post("/v1/load_lora_adapter", json=body)).status_code == 404
