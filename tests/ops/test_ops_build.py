"""corral.ops.build: which sources go into the extension, where it is built, and
what a user sees when it cannot be built."""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import subprocess
import sys

import pytest
import torch

from corral.errors import NativeBuildError
from corral.ops import build

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def packaged_copy(monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path) -> pathlib.Path:
    """A copy of native/ where an installed package keeps it."""
    copy = tmp_path / "corral" / "_native"
    shutil.copytree(ROOT / "native", copy)
    monkeypatch.setattr(build, "PACKAGED_NATIVE_DIR", copy)
    return copy


def test_cpu_build_compiles_the_bindings_and_every_cpu_source_but_no_cuda() -> None:
    sources = build.native_sources(with_cuda=False)
    folder = build.native_dir()
    assert sources[0] == folder / "bindings.cpp"
    assert set(sources[1:]) == set((folder / "cpu").glob("*.cpp"))
    assert not any(path.suffix == ".cu" for path in sources)


def test_cuda_build_adds_the_cuda_sources() -> None:
    sources = build.native_sources(with_cuda=True)
    cuda_dir = build.native_dir() / "cuda"
    expected = set(cuda_dir.glob("*.cu")) | set(cuda_dir.glob("*.cpp"))
    assert expected
    assert set(sources) - set(build.native_sources(with_cuda=False)) == expected


def test_an_editable_install_reads_the_checkouts_native_folder() -> None:
    # This test session runs on the editable install: no packaged copy in src/.
    assert not build.PACKAGED_NATIVE_DIR.exists()
    assert build.native_dir() == ROOT / "native"


def test_packaged_sources_come_before_the_checkouts(packaged_copy: pathlib.Path) -> None:
    assert build.native_dir() == packaged_copy
    assert all(packaged_copy in path.parents for path in build.native_sources(with_cuda=True))


def test_missing_native_sources_name_both_places_and_say_to_reinstall(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    monkeypatch.setattr(build, "PACKAGED_NATIVE_DIR", tmp_path / "corral" / "_native")
    monkeypatch.setattr(build, "CHECKOUT_NATIVE_DIR", tmp_path / "native")
    with pytest.raises(NativeBuildError, match=r"corral/_native \(.*/native \(.*reinstall corral"):
        build.native_sources(with_cuda=False)


def test_the_wheel_build_copies_every_native_file_into_the_package(
    tmp_path: pathlib.Path,
) -> None:
    # The build_py step of `python -m build` (setup.py); building a whole wheel takes
    # minutes and is left to scripts/check_wheel.sh.
    lib, egg = tmp_path / "lib", tmp_path / "egg"
    egg.mkdir()
    command = [sys.executable, "setup.py", "-q", "egg_info", "--egg-base", str(egg)]
    command += ["build_py", "--build-lib", str(lib)]
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    # Where setup.py puts the sources is where corral.ops.build looks for them.
    packaged = lib / build.PACKAGED_NATIVE_DIR.relative_to(ROOT / "src")
    native = {p.relative_to(ROOT / "native") for p in (ROOT / "native").rglob("*") if p.is_file()}
    native = {p for p in native if "__pycache__" not in p.parts}
    assert any(p.suffix == ".cu" for p in native)
    assert native == {p.relative_to(packaged) for p in packaged.rglob("*") if p.is_file()}
    model = lib / "corral" / "default_model"
    assert {"model.safetensors", "config.json", "chat_template.jinja"} <= {
        p.name for p in model.iterdir()
    }


def test_sources_newer_than_the_library_make_it_stale(
    packaged_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    library = tmp_path / "build" / "corral_native.so"
    library.parent.mkdir()
    library.touch()
    newest = max(p.stat().st_mtime for p in [packaged_copy, *packaged_copy.rglob("*")])
    os.utime(library, (newest + 10, newest + 10))
    assert not build._is_stale(library)

    header = next(packaged_copy.glob("cpu/*.h"))
    os.utime(header, (newest + 20, newest + 20))
    assert build._is_stale(library)


def test_a_removed_source_makes_the_library_stale(
    packaged_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    library = tmp_path / "corral_native.so"
    library.touch()
    newest = max(p.stat().st_mtime for p in [packaged_copy, *packaged_copy.rglob("*")])
    os.utime(library, (newest + 10, newest + 10))
    (packaged_copy / "cpu" / "cache_ops.cpp").unlink()
    os.utime(packaged_copy / "cpu", (newest + 20, newest + 20))
    assert build._is_stale(library)


def test_a_compile_in_flight_makes_the_library_stale(
    packaged_copy: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    # torch's lock file: load through cpp_extension, which waits for the other compile.
    library = tmp_path / "corral_native.so"
    library.touch()
    (tmp_path / "lock").touch()
    assert build._is_stale(library)
    assert build._is_stale(tmp_path / "missing.so")


def _without_compilers(tmp_path: pathlib.Path) -> dict[str, str]:
    """This process's environment with nothing on PATH and a fresh cache folder."""
    env = {key: value for key, value in os.environ.items() if key not in ("CXX", "CC")}
    empty = tmp_path / "bin"
    empty.mkdir()
    env.update(PATH=str(empty), CORRAL_CACHE_DIR=str(tmp_path / "cache"))
    return env


def test_a_missing_compiler_is_one_line_saying_what_to_install(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral.ops.build"],
        env=_without_compilers(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    assert "C++ compiler 'c++'" in result.stderr
    assert "apt install g++" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_cli_reports_a_missing_compiler_in_one_line(tmp_path: pathlib.Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "corral.entrypoints.cli", "generate", "Once upon a time"],
        env=_without_compilers(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1
    assert errors[0].startswith("corral generate: error: ")
    assert "apt install g++" in errors[0]


def test_a_built_library_loads_without_a_compiler_or_ninja(tmp_path: pathlib.Path) -> None:
    build.load_library()
    env = {**os.environ, "PATH": str(tmp_path)}
    script = "import corral.ops; print(corral.ops.load_library())"
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(build.load_library())
    assert result.stderr == ""


def test_ninja_from_the_environments_bin_folder_is_found_when_not_activated(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "ninja").symlink_to(shutil.which("ninja") or "/missing")
    compilers = tmp_path / "compilers"
    compilers.mkdir()
    (compilers / "c++").symlink_to(shutil.which("c++") or "/missing")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(compilers))
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    build._check_toolchain(with_cuda=False)
    assert shutil.which("ninja") == str(bin_dir / "ninja")


def test_no_ninja_anywhere_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: pathlib.Path
) -> None:
    (tmp_path / "c++").symlink_to(shutil.which("c++") or "/missing")
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "venv" / "bin" / "python"))
    with pytest.raises(NativeBuildError, match="pip install ninja"):
        build._check_toolchain(with_cuda=False)


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
