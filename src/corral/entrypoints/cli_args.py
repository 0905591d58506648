"""Command-line options generated from attrs classes, one option per field.

Every field of `AsyncEngineArgs` (and the sampling fields of `SamplingParams`)
becomes ``--field-name`` with the class docstring's description as help, so the
CLI can never drift from the Python API: a new field is a new option. Booleans get
``--flag/--no-flag``; an ``X | None`` field also takes the word ``None``, as its help
promises. Help text is the docstring made plain: no reStructuredText markup, no notes
about how the value is stored.
"""

from __future__ import annotations

import argparse
import re
import types
import typing
from collections.abc import Iterable
from typing import Any

import attrs


def field_docs(cls: type) -> dict[str, str]:
    """The ``Attributes:`` section of the docstrings of ``cls`` and its bases, per field."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        text = klass.__doc__ or ""
        if "Attributes:" not in text:
            continue
        section = text.split("Attributes:", 1)[1]
        current: str | None = None
        for line in section.splitlines():
            match = re.match(r"^\s{4,8}(\w+): (.*)$", line)
            if match and len(line) - len(line.lstrip()) <= 8:
                current = match.group(1)
                docs[current] = match.group(2).strip()
            elif current is not None and line.strip():
                docs[current] += " " + line.strip()
    return docs


class _ExplicitNone:
    """The value of an option given as ``None`` on the command line: unlike an option
    left out (None in the namespace), it is passed on, overriding the field's default."""

    def __repr__(self) -> str:
        return "None"


EXPLICIT_NONE = _ExplicitNone()

# Sentences that describe the Python value's storage or point into the code; they mean
# nothing to someone typing a flag.
_IMPLEMENTATION_NOTES = re.compile(r"\s*(Normalized to a tuple\.|\(see `\w+`\))")


def plain_help(text: str) -> str:
    """A docstring fragment as help text: markup and implementation notes removed."""
    text = _IMPLEMENTATION_NOTES.sub("", text)
    return re.sub(r"``?([^`]+)``?", r"\1", text).replace("%", "%%")


def _none_or(convert: Any) -> Any:
    def parse(text: str) -> Any:
        return EXPLICIT_NONE if text == "None" else convert(text)

    parse.__name__ = convert.__name__  # argparse names the type in its error message
    return parse


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _base_type(hint: Any) -> Any:
    """The type of a hint without its ``| None``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def option_name(field: str) -> str:
    """``max_model_len`` -> ``--max-model-len``."""
    return "--" + field.replace("_", "-")


def add_attrs_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
) -> list[str]:
    """Add one option per attrs field of ``cls``; return the field names added.

    Args:
        parser: Where to add the options.
        cls: An attrs class with a Google-style ``Attributes:`` docstring.
        skip: Fields left out (positional arguments, callables, ...).
        defaults: Option defaults that differ from the class's.

    Raises:
        TypeError: A field's type has no command-line form (add it to ``skip``).
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    added = []
    for field in attrs.fields(cls):
        if field.name in skip:
            continue
        default = (defaults or {}).get(field.name, field.default)
        if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
            default = default.factory()
        help_text = plain_help(docs.get(field.name, ""))
        shown = f"{help_text} (default: {default!r})"
        base = _base_type(hints[field.name])
        optional = _is_optional(hints[field.name])
        name = option_name(field.name)
        if base is bool:
            parser.add_argument(
                name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        elif typing.get_origin(base) is typing.Literal:
            choices = typing.get_args(base)
            parser.add_argument(name, choices=choices, default=default, help=shown)
        elif base in (int, float, str):
            metavar = base.__name__.upper() + ("|None" if optional else "")
            convert = _none_or(base) if optional else base
            parser.add_argument(name, type=convert, default=default, metavar=metavar, help=shown)
        elif typing.get_origin(base) is tuple and typing.get_args(base)[0] in (int, str):
            item = typing.get_args(base)[0]
            parser.add_argument(
                name, type=item, action="append", default=None, metavar=item.__name__.upper(),
                help=f"{help_text} (repeat the option for several)",
            )  # fmt: skip
        else:
            raise TypeError(
                f"{cls.__name__}.{field.name}: no command-line form for {hints[field.name]}"
            )
        added.append(field.name)
    return added


def collect(namespace: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The values of ``fields`` in a parsed namespace. None (an unset option whose
    default is None, or a repeatable option never given) is left out, so that the
    class's own default applies; an option given as ``None`` passes None."""
    values: dict[str, Any] = {}
    for field in fields:
        value = getattr(namespace, field)
        if value is EXPLICIT_NONE:
            values[field] = None
        elif value is not None:
            values[field] = value
    return values
