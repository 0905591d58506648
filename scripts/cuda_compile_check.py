"""Compile and link the native extension with its CUDA sources; no GPU needed.

Run by the nox ``cuda`` session with the CUDA build of torch installed. It
points CUDA_HOME at the toolkit that the ``nvcc`` on PATH belongs to, adds the
headers of the ``nvidia/cu13`` wheel (cusparse.h and friends, which torch's
headers include), builds the sources and flags of ``corral.ops.build`` for sm_80 and sm_90, loads
the library (which checks the registrations against the schemas) and exits
non-zero on failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parent.parent
ARCHS = "8.0;9.0"


def cuda_home_of_nvcc() -> Path:
    """The toolkit root of the nvcc on PATH, looking through a wrapper script."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        sys.exit("cuda_compile_check: no nvcc on PATH")
    path = Path(nvcc)
    head = path.read_bytes()[:4096]
    if head.startswith(b"#!"):
        # A wrapper such as `exec /usr/local/cuda-13.0/bin/nvcc "$@"`.
        match = re.search(rb"(/\S+)/bin/nvcc\b", head)
        if match is None:
            sys.exit(f"cuda_compile_check: cannot find the toolkit named by {path}")
        return Path(match.group(1).decode())
    return path.resolve().parent.parent


def cu13_include_dir() -> Path:
    """The include folder of the nvidia/cu13 wheel that the CUDA torch pulls in."""
    spec = importlib.util.find_spec("nvidia")
    roots = list(spec.submodule_search_locations or []) if spec else []
    for root in roots:
        include = Path(root) / "cu13" / "include"
        if (include / "cusparse.h").is_file():
            return include
    sys.exit(f"cuda_compile_check: no nvidia/cu13/include with cusparse.h in {roots}")


def load_build_module() -> ModuleType:
    """corral.ops.build by path: it needs only torch, and this session's venv
    does not install corral (nor its other dependencies)."""
    path = REPO / "src" / "corral" / "ops" / "build.py"
    spec = importlib.util.spec_from_file_location("corral_ops_build", path)
    if spec is None or spec.loader is None:
        sys.exit(f"cuda_compile_check: cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--build-dir",
        type=Path,
        help="keep objects here between runs (default: a fresh temporary folder)",
    )
    args = parser.parse_args()

    cuda_home = cuda_home_of_nvcc()
    os.environ["CUDA_HOME"] = str(cuda_home)
    os.environ["TORCH_CUDA_ARCH_LIST"] = ARCHS
    os.environ.setdefault("MAX_JOBS", "2")
    include = cu13_include_dir()

    # Imported only now: cpp_extension reads CUDA_HOME when it is imported.
    import torch
    from torch.utils import cpp_extension

    if torch.version.cuda is None:
        sys.exit(f"cuda_compile_check: torch {torch.__version__} is a CPU-only build")
    build = load_build_module()
    srcs = build.native_sources(with_cuda=True)
    if not any(path.suffix == ".cu" for path in srcs):
        sys.exit("cuda_compile_check: no CUDA sources under native/cuda")
    print(
        f"cuda_compile_check: torch {torch.__version__} (CUDA {torch.version.cuda}), "
        f"CUDA_HOME={cuda_home}, archs {ARCHS}, {len(srcs)} sources",
        flush=True,
    )

    with tempfile.TemporaryDirectory(prefix="corral-cuda-") as scratch:
        build_dir = args.build_dir or Path(scratch)
        build_dir.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        cpp_extension.load(
            name="corral_cuda_compile_check",
            sources=[str(path) for path in srcs],
            extra_include_paths=[str(include)],
            extra_cflags=build.CXX_FLAGS,
            extra_cuda_cflags=build.CUDA_FLAGS,
            extra_ldflags=build.LD_FLAGS,
            build_directory=str(build_dir),
            with_cuda=True,
            is_python_module=False,
            is_standalone=False,
            verbose=True,
        )
        print(
            f"cuda_compile_check: built and linked in {time.monotonic() - start:.0f} s",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
