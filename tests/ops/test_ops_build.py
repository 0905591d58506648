"""corral.ops.build: which sources go into the extension and where it is built."""

from __future__ import annotations

import logging
import pathlib

import pytest
import torch

from corral.ops import build


def test_cpu_build_compiles_the_bindings_and_every_cpu_source_but_no_cuda() -> None:
    sources = build.native_sources(with_cuda=False)
    assert sources[0] == build.NATIVE_DIR / "bindings.cpp"
    assert set(sources[1:]) == set((build.NATIVE_DIR / "cpu").glob("*.cpp"))
    assert not any(path.suffix == ".cu" for path in sources)


def test_cuda_build_adds_the_cuda_sources() -> None:
    sources = build.native_sources(with_cuda=True)
    cuda_dir = build.NATIVE_DIR / "cuda"
    expected = set(cuda_dir.glob("*.cu")) | set(cuda_dir.glob("*.cpp"))
    assert set(sources) - set(build.native_sources(with_cuda=False)) == expected


def test_missing_native_sources_say_that_an_editable_install_is_needed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(build, "NATIVE_DIR", tmp_path / "native")
    with pytest.raises(RuntimeError, match="pip install -e"):
        build.native_sources(with_cuda=False)


def test_build_folder_follows_the_cache_dir_and_the_torch_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setenv("CORRAL_CACHE_DIR", str(tmp_path))
    cpu_dir = build.build_directory(with_cuda=False)
    assert cpu_dir.parent == tmp_path / "torch_extensions"
    assert torch.__version__.split("+")[0] in cpu_dir.name
    assert cpu_dir != build.build_directory(with_cuda=True)


def test_openmp_is_on_for_compile_and_link() -> None:
    # Without it at::parallel_for, an inline OpenMP region, runs on one thread.
    assert "-fopenmp" in build.CXX_FLAGS
    assert "-fopenmp" in build.LD_FLAGS


def test_loading_again_is_quiet_and_the_ops_are_registered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    build.load_library()
    with caplog.at_level(logging.INFO, logger="corral.ops"):
        path = build.load_library()
    assert path.is_file()
    assert caplog.records == []
    assert hasattr(torch.ops.corral, "paged_attention")
