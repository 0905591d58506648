"""Build and load the corral native extension (``torch.ops.corral.*``).

The extension is compiled just in time with :func:`torch.utils.cpp_extension.load`
from the C++ (and, where a GPU is usable, CUDA) sources in the repository's top-level
``native/`` folder, into a persistent build folder; later processes find it there and
only relink what changed. ``python -m corral.ops.build`` builds ahead of time and says
so; ``scripts/bootstrap`` runs it.

The build folder is ``$CORRAL_CACHE_DIR/torch_extensions/<key>`` (default
``~/.cache/corral``), where ``<key>`` names the torch version, CUDA or CPU, the CPU's
vector capability and a hash of the compile flags, the CPU's feature flags, the torch
install and the Python version, so two torch builds, two virtual environments or two
kinds of CPU never share object files.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
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
    "native_sources",
]

logger = logging.getLogger("corral.ops")

EXTENSION_NAME = "corral_native"
NATIVE_DIR = pathlib.Path(__file__).resolve().parents[3] / "native"


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


def native_sources(with_cuda: bool) -> list[pathlib.Path]:
    """The files compiled into the extension.

    Args:
        with_cuda: also include ``native/cuda/*.cu`` and ``native/cuda/*.cpp``.

    Returns:
        ``native/bindings.cpp``, the CPU sources, then (optionally) the CUDA sources,
        each group sorted by name.

    Raises:
        RuntimeError: ``native/`` is missing: corral is not an editable install of
            its repository, the only layout that ships the native sources.
    """
    if not (NATIVE_DIR / "bindings.cpp").is_file():
        raise RuntimeError(
            f"corral's native sources are not at {NATIVE_DIR}; the extension is built from "
            "a source checkout, so install corral editable (pip install -e .)"
        )
    sources = [NATIVE_DIR / "bindings.cpp", *sorted((NATIVE_DIR / "cpu").glob("*.cpp"))]
    if with_cuda:
        cuda_dir = NATIVE_DIR / "cuda"
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
    # Python: two virtual environments sharing a folder would rebuild it in turn.
    install = f"{torch.__file__} {sys.version}"
    digest = hashlib.sha256((flags + _cpu_features() + install).encode()).hexdigest()[:10]
    variant = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    capability = torch.backends.cpu.get_cpu_capability().lower()
    key = f"torch{torch.__version__.split('+')[0]}-{variant}-{capability}-{digest}"
    return root / "torch_extensions" / key


def _is_stale(library: pathlib.Path, with_cuda: bool) -> bool:
    """Whether the built library is missing or older than a source or a header
    next to one (only for the log line: ninja decides what to recompile)."""
    if not library.is_file():
        return True
    sources = native_sources(with_cuda)
    headers = [
        path
        for folder in {source.parent for source in sources}
        for pattern in ("*.h", "*.cuh")
        for path in folder.glob(pattern)
    ]
    built = library.stat().st_mtime
    return any(path.stat().st_mtime > built for path in sources + headers)


def load_library() -> pathlib.Path:
    """Build the extension if needed and load it into this process (once).

    Logs at WARNING before a compile, which takes about a minute on a small
    machine, and at INFO when it is done; a cached build loads quietly.

    Returns:
        The path of the loaded shared library.
    """
    global _loaded
    with _lock:
        if _loaded is not None:
            return _loaded
        from torch.utils import cpp_extension

        with_cuda = _with_cuda()
        sources = native_sources(with_cuda)
        directory = build_directory(with_cuda)
        directory.mkdir(parents=True, exist_ok=True)
        library = directory / f"{EXTENSION_NAME}.so"
        kind = "CPU + CUDA" if with_cuda else "CPU"
        stale = _is_stale(library, with_cuda)
        if stale:
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
        if stale:
            logger.info(
                "building corral native extension (%s) ... done in %.0f s",
                kind,
                time.monotonic() - start,
            )
        _loaded = library
        return library


def main() -> int:
    """``python -m corral.ops.build``: build (or find cached) and report."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
    start = time.monotonic()
    library = load_library()
    print(f"corral native extension ready: {library} ({time.monotonic() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
