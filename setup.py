"""Ship corral's native sources inside the package.

The C++ and CUDA sources live in the repository's top-level ``native/`` folder and
are compiled just in time on the machine that runs corral (docs/kernels.md, "How
the extension is built from a wheel", says why). A wheel must therefore carry them:
``build_py`` copies ``native/`` into ``corral/_native``, where ``corral.ops.build``
looks first. An editable install skips the copy, and ``corral.ops.build`` then reads
``native/`` in the checkout, so an edit there is picked up without reinstalling.
Everything else about the package is declared in pyproject.toml.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

NATIVE = Path(__file__).resolve().parent / "native"
PACKAGED_NATIVE = Path("corral") / "_native"
# Build leftovers that must never reach a wheel (MANIFEST.in keeps them out of the sdist).
IGNORED = shutil.ignore_patterns("__pycache__", "*.py[cod]", "*.o", "*.so")


class BuildPyWithNative(build_py):
    """``build_py`` that also copies ``native/`` into ``corral/_native``."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        if not (NATIVE / "bindings.cpp").is_file():
            # Building from a tree without the sources would make a wheel that can
            # never load its kernels: fail here, not on the user's machine.
            raise FileNotFoundError(f"corral's native sources are missing: {NATIVE}/bindings.cpp")
        target = Path(self.build_lib) / PACKAGED_NATIVE
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(NATIVE, target, ignore=IGNORED)


setup(cmdclass={"build_py": BuildPyWithNative})
