"""Developer sessions: tests, lint, typecheck, and the CUDA compile check."""

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "layers", "typecheck", "tests"]

SOURCES = ["src", "tests", "benchmarks", "scripts", "noxfile.py"]


def _install_corral(session: nox.Session) -> None:
    session.install("torch==2.13.0")
    session.install("-e", ".[test,dev]")


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite on the CPU build of torch."""
    _install_corral(session)
    session.run("python", "-m", "corral.ops.build")
    session.run("python", "-m", "pytest", "-q", *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation site into docs/_build/html; warnings are errors."""
    session.install("torch==2.13.0")
    session.install("-e", ".[docs]")
    session.run(
        "sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html",
        *session.posargs,
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff")
    session.run("ruff", "check", *SOURCES)
    session.run("ruff", "format", "--check", *SOURCES)


@nox.session
def layers(session: nox.Session) -> None:
    """The import-linter layers contract of pyproject.toml (a back-edge fails)."""
    session.install("import-linter>=2.1")
    session.install("-e", ".", "--no-deps")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy over src/corral."""
    _install_corral(session)
    session.run("mypy")


@nox.session
def cuda(session: nox.Session) -> None:
    """Compile the CUDA sources (sm_80, sm_90) against torch 2.14.1 + CUDA 13.

    No GPU is needed: this only checks that native/cuda builds and links.
    """
    session.install("torch==2.14.1", "ninja", "numpy")
    session.run("python", "scripts/cuda_compile_check.py", *session.posargs)
