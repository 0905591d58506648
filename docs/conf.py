"""Sphinx configuration of corral's documentation site.

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (``nox -s docs``).
Pages are Markdown (MyST); the API reference comes from the docstrings (autodoc with
napoleon's Google style). Two local directives keep generated content honest: the
CLI reference is the real ``corral`` argument parser's help, and the benchmarks page
shows the benchmark result files that lie under ``docs/`` at build time.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent / "src"))

import corral  # noqa: E402

project = "corral"
author = "the corral authors"
copyright = "2026, the corral authors"
release = corral.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown"}
exclude_patterns = ["_build", "examples", "Thumbs.db", ".DS_Store"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"corral {release}"

# Docstrings use single backticks for names (Google style, as trio does): resolve
# them as Python objects, and render what does not resolve as code.
default_role = "py:obj"
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_class_signature = "mixed"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True
napoleon_use_rtype = False
nitpicky = False


class CliHelp(SphinxDirective):
    """``{corral-help}`` *subcommand*: the help text of the real ``corral`` parser.

    With no argument, the top-level help. Rendered at 100 columns so that the page
    does not depend on the terminal that built it.
    """

    optional_arguments = 1
    has_content = False

    def run(self) -> list[nodes.Node]:
        os.environ["COLUMNS"] = "100"
        from corral.entrypoints.cli import build_parser

        parser = build_parser()
        if self.arguments:
            name = self.arguments[0]
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[name]
        text = parser.format_help()
        block = nodes.literal_block(text, text)
        block["language"] = "text"
        return [block]


class BenchmarkResults(SphinxDirective):
    """``{corral-benchmark-results}``: the result files under ``docs/`` that match the
    glob patterns given as content, one per line.

    Plots (``.png``, ``.svg``) become images and JSON files are shown verbatim. When
    no file matches, the page says that no result is committed instead of showing
    numbers.
    """

    has_content = True

    def run(self) -> list[nodes.Node]:
        patterns = [line.strip() for line in self.content if line.strip()]
        found = sorted({path for pattern in patterns for path in DOCS.glob(pattern)})
        shown = [p for p in found if p.suffix in (".png", ".svg", ".json")]
        if not shown:
            text = "No result file is committed yet (looked for: " + ", ".join(patterns) + ")."
            return [nodes.paragraph(text=text)]
        out: list[nodes.Node] = []
        for path in shown:
            self.env.note_dependency(str(path))
            rel = path.relative_to(DOCS).as_posix()
            out.append(nodes.rubric(text=rel))
            if path.suffix == ".json":
                text = path.read_text()
                block = nodes.literal_block(text, text)
                block["language"] = "json"
                out.append(block)
            else:
                out.append(nodes.image(uri="/" + rel, alt=rel))
        return out


BENCHMARK_PAGES_MARKER = "% corral: benchmark pages"


def benchmark_pages(app, docname, source):  # type: ignore[no-untyped-def]
    """Replace the marker line of the benchmarks page with a toctree of the
    ``docs/benchmarks_*.md`` pages that exist (a glob toctree would warn while there
    are none)."""
    if docname != "benchmarks":
        return
    pages = sorted(path.stem for path in DOCS.glob("benchmarks_*.md"))
    listing = "No benchmark has a page of its own yet."
    if pages:
        listing = "```{toctree}\n:maxdepth: 1\n\n" + "\n".join(pages) + "\n```"
    source[0] = source[0].replace(BENCHMARK_PAGES_MARKER, listing)


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("corral-help", CliHelp)
    app.add_directive("corral-benchmark-results", BenchmarkResults)
    app.connect("source-read", benchmark_pages)
    return {"parallel_read_safe": True}
