"""The layers hold at import time: the core needs no async library, tokenizer or
torch, and `import corral` loads the front doors only when they are used."""

from __future__ import annotations

import subprocess
import sys

import pytest

# Setting sys.modules[name] = None makes `import name` raise ImportError.
HEAVY = ("anyio", "trio", "sniffio", "tokenizers", "transformers", "torch")


def run_python(code: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("blocked", [*HEAVY, "all"])
def test_the_core_imports_without_async_tokenizers_or_torch(blocked: str) -> None:
    names = HEAVY if blocked == "all" else (blocked,)
    run_python(
        "import sys\n"
        f"for name in {names!r}:\n"
        "    sys.modules[name] = None\n"
        "import corral.core.scheduler, corral.core.engine_core, corral.core.validation\n"
        "import corral.testing\n"
        "from corral.testing import make_fake_core, run_to_completion\n"
        "import corral\n"
        "core = make_fake_core()\n"
        "core.add_request('a', [1, 2, 3], corral.SamplingParams(max_tokens=2))\n"
        "assert run_to_completion(core)['a'].finished\n"
    )


def test_import_corral_loads_the_front_doors_on_first_use() -> None:
    run_python(
        "import sys\n"
        "import corral\n"
        "assert 'anyio' not in sys.modules and 'corral.engine' not in sys.modules\n"
        "assert 'torch' not in sys.modules\n"
        "open_engine = corral.open_engine\n"
        "assert 'corral.engine' in sys.modules\n"
        "from corral.engine import open_engine as direct\n"
        "assert open_engine is direct\n"
        "assert corral.AsyncLLMEngine.__module__ == 'corral.async_llm_engine'\n"
    )


def test_corral_exports_its_public_names_and_no_internal_ones() -> None:
    import corral

    for name in corral.__all__:
        assert getattr(corral, name) is not None
    assert set(corral.__all__) <= set(dir(corral))
    for internal in ("EngineCore", "CoreConfig", "ModelRunner", "core", "model", "ops"):
        assert internal not in corral.__all__
    with pytest.raises(AttributeError, match="no attribute 'EngineCore'"):
        _ = corral.EngineCore  # type: ignore[attr-defined]
