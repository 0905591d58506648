"""Build and load the corral native extension (``torch.ops.corral.*``).

The extension is compiled just in time with :func:`torch.utils.cpp_extension.load`
from the C++ (and, where a GPU is usable, CUDA) sources, into a persistent build
folder; later processes load it from there without a compiler, and a source newer than
the library rebuilds what changed. ``python -m corral.ops.build`` builds ahead of time
and says so; ``scripts/bootstrap`` runs it.

The sources ship inside the package, in ``corral/_native`` (setup.py copies the
repository's top-level ``native/`` folder there when it builds a wheel); an editable
install has no such folder and reads ``native/`` in its checkout.

The build folder is ``$CORRAL_CACHE_DIR/torch_extensions/<key>`` (default
``~/.cache/corral``), where ``<key>`` names the torch version, CUDA or CPU, the CPU's
vector capability and a hash of the compile flags, the CPU's feature flags, the torch
install, the Python version and the source folder, so two torch builds, two virtual
environments, two kinds of CPU or two copies of the sources never share object files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import sys
import threading
import time

import torch

__all__ = [
    "CUDA_FLAGS",
    "CXX_FLAGS",
    "LD_FLAGS",
    "build_directory",
    "load_library",
    "native_dir",
    "native_sources",
]

logger = logging.getLogger("corral.ops")

EXTENSION_NAME = "corral_native"
PACKAGED_NATIVE_DIR = pathlib.Path(__file__).resolve().parents[1] / "_native"
"""Where a wheel or sdist install keeps the sources (setup.py copies them there)."""
CHECKOUT_NATIVE_DIR = pathlib.Path(__file__).resolve().parents[3] / "native"
"""Where an editable install finds them: ``native/`` beside ``src/`` in the checkout."""


def _vector_flags() -> list[str]:
    """Flags that let ``at::vec`` use the widest vectors torch itself uses here.

    ATen's vector headers pick their width from ``CPU_CAPABILITY_*`` macros, so the
    macro must match the instruction set the compiler targets. Following torch's
    own runtime choice keeps the extension no wider than the machine it runs on;
    ``-march=native`` then lets the compiler schedule for this exact CPU (CI runs
    on the same machine kind; a build folder is keyed by the capability).
    """
    capability = torch.backends.cpu.get_cpu_capability()
    if capability == "AVX512":
        return ["-march=native", "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if capability == "AVX2":
        return ["-march=native", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


# Common C++ flags for every source file (the CUDA compile check imports them).
# -fopenmp is needed because at::parallel_for is an inline OpenMP region in torch's
# headers: without it, every "parallel" loop in the extension would run on one thread.
CXX_FLAGS: list[str] = ["-O3", "-fopenmp", "-fvisibility-inlines-hidden", *_vector_flags()]
LD_FLAGS: list[str] = ["-fopenmp"]
CUDA_FLAGS: list[str] = ["-O3", "--use_fast_math"]

_lock = threading.Lock()
_loaded: pathlib.Path | None = None


def _native_build_error(message: str) -> Exception:
    # Imported only when raising: scripts/cuda_compile_check.py loads this module by
    # path in a virtual environment that has torch but not corral.
    from corral.errors import NativeBuildError

    return NativeBuildError(message)


def native_dir() -> pathlib.Path:
    """The folder holding the native sources: the packaged copy, else the checkout's.

    Raises:
        NativeBuildError: neither folder holds ``bindings.cpp`` (a broken install).
    """
    for folder in (PACKAGED_NATIVE_DIR, CHECKOUT_NATIVE_DIR):
        if (folder / "bindings.cpp").is_file():
            return folder
    raise _native_build_error(
        f"corral's native sources are missing: neither {PACKAGED_NATIVE_DIR} (an installed "
        f"package) nor {CHECKOUT_NATIVE_DIR} (an editable checkout) holds bindings.cpp; "
        "reinstall corral"
    )


def native_sources(with_cuda: bool) -> list[pathlib.Path]:
    """The files compiled into the extension.

    Args:
        with_cuda: also include ``cuda/*.cu`` and ``cuda/*.cpp``.

    Returns:
        ``bindings.cpp``, the CPU sources (``cpu/*.cpp``), then (optionally) the CUDA
        sources, each group sorted by name, all in :func:`native_dir`.
    """
    folder = native_dir()
    sources = [folder / "bindings.cpp", *sorted((folder / "cpu").glob("*.cpp"))]
    if with_cuda:
        cuda_dir = folder / "cuda"
        sources += sorted(cuda_dir.glob("*.cu")) + sorted(cuda_dir.glob("*.cpp"))
    return sources


def _with_cuda() -> bool:
    return torch.version.cuda is not None and torch.cuda.is_available()


def _cpu_features() -> str:
    """The CPU's feature flags: ``-march=native`` code may use any of them, so a
    build folder shared by several machines (a network home) must tell them apart."""
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        return ""
    for line in cpuinfo.read_text().splitlines():
        if line.startswith(("flags", "Features")):
            return line
    return ""


def build_directory(with_cuda: bool) -> pathlib.Path:
    """The persistent build folder for this torch build, CPU and compile flags."""
    root = pathlib.Path(os.environ.get("CORRAL_CACHE_DIR", pathlib.Path.home() / ".cache/corral"))
    flags = " ".join(CXX_FLAGS + LD_FLAGS + (CUDA_FLAGS if with_cuda else []))
    # The include paths in the compile commands name the torch install and the
    # Python, and the sources' paths name their folder: two virtual environments, or
    # a checkout and an installed copy, sharing a folder would rebuild it in turn.
    install = f"{torch.__file__} {sys.version} {native_dir()}"
    digest = hashlib.sha256((flags + _cpu_features() + install).encode()).hexdigest()[:10]
    variant = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    key = f"torch{torch.__version__.split('+')[0]}-{variant}-{capability}-{digest}"
    return root / "torch_extensions" / key


def _is_stale(library: pathlib.Path) -> bool:
    """Whether the built library is missing or older than anything in the source folder.

    Folders count too: removing a source changes its folder's time. A compile in
    flight (torch's ``lock`` file beside the library) also counts, so that this
    process waits for it rather than loading a half-written library.
    """
    if not library.is_file() or (library.parent / "lock").exists():
        return True
    built = library.stat().st_mtime
    folder = native_dir()
    return any(path.stat().st_mtime > built for path in [folder, *folder.rglob("*")])


def _check_toolchain(with_cuda: bool) -> None:
    """Fail with one line saying what to install when a compile cannot start.

    torch would otherwise fail deep inside ninja with a traceback that names neither
    corral nor the missing program.

    Raises:
        NativeBuildError: no C++ compiler, no ninja, or (for a CUDA build) no CUDA
            toolkit.
    """
    from torch.utils import cpp_extension

    compiler = cpp_extension.get_cxx_compiler()
    if shutil.which(compiler) is None:
        named = "the CXX environment variable" if "CXX" in os.environ else "the default"
        raise _native_build_error(
            f"corral compiles its C++ kernels on first use, but the C++ compiler {compiler!r} "
            f"({named}) is not on PATH: install g++ (Debian/Ubuntu: apt install g++; "
            "Fedora: dnf install gcc-c++; conda: conda install gxx_linux-64) and run again"
        )
    if shutil.which("ninja") is None:
        # The ninja wheel (a dependency of corral) puts its binary in the virtual
        # environment's bin folder, which is on PATH only while the environment is
        # activated; `venv/bin/corral` run directly must find it too.
        bin_dir = pathlib.Path(sys.executable).parent
        if not (bin_dir / "ninja").is_file():
            raise _native_build_error(
                "corral compiles its C++ kernels on first use with ninja, which is not on "
                "PATH: pip install ninja (or apt install ninja-build) and run again"
            )
        os.environ["PATH"] = os.pathsep.join([os.environ.get("PATH", ""), str(bin_dir)])
    if with_cuda and cpp_extension.CUDA_HOME is None:
        raise _native_build_error(
            f"corral compiles its CUDA kernels on first use, but no CUDA toolkit was found: "
            f"install the CUDA {torch.version.cuda} toolkit (nvcc) and set CUDA_HOME to it"
        )


def load_library() -> pathlib.Path:
    """Build the extension if needed and load it into this process (once).

    Logs at WARNING before a compile, which takes about a minute on a small
    machine, and at INFO when it is done; a cached build loads quietly, without
    a compiler.

    Returns:
        The path of the loaded shared library.

    Raises:
        NativeBuildError: a compile is needed and a program it needs is missing.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        with_cuda = _with_cuda()
        directory = build_directory(with_cuda)
        library = directory / f"{EXTENSION_NAME}.so"
        if _is_stale(library):
            _build(with_cuda, directory)
        else:
            # What cpp_extension.load would do after finding nothing to rebuild, minus
            # its compiler and ninja checks, so that a built extension loads on a
            # machine without them.
            torch.ops.load_library(str(library))
        _loaded = library
        return library


def _build(with_cuda: bool, directory: pathlib.Path) -> None:
    """Compile (or finish compiling) the extension in ``directory`` and load it."""
    from torch.utils import cpp_extension

    sources = native_sources(with_cuda)
    _check_toolchain(with_cuda)
    directory.mkdir(parents=True, exist_ok=True)
    kind = "CPU + CUDA" if with_cuda else "CPU"
    logger.warning(
        "building corral native extension (%s) in %s; this takes a minute or two ...",
        kind,
        directory,
    )
    start = time.monotonic()
    cpp_extension.load(
        name=EXTENSION_NAME,
        sources=[str(path) for path in sources],
        extra_cflags=CXX_FLAGS,
        extra_cuda_cflags=CUDA_FLAGS,
        extra_ldflags=LD_FLAGS,
        build_directory=str(directory),
        with_cuda=with_cuda,
        is_python_module=False,
        verbose=False,
    )
    # ninja leaves the library untouched when only a file it does not compile changed
    # (a README, say); without this every later process would see it stale again.
    os.utime(directory / f"{EXTENSION_NAME}.so")
    logger.info(
        "building corral native extension (%s) ... done in %.0f s",
        kind,
        time.monotonic() - start,
    )


def main() -> int:
    """``python -m corral.ops.build``: build (or find cached) and report."""
    from corral.errors import NativeBuildError

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.monotonic()
    try:
        library = load_library()
    except NativeBuildError as exc:
        print(f"corral.ops.build: error: {exc}", file=sys.stderr)
        return 1
    print(f"corral native extension ready: {library} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
