"""A corpus of JSON schemas for the structured-output tests (each a realistic shape)."""

from __future__ import annotations

from typing import Any

_S: dict[str, Any] = {"type": "string"}
_I: dict[str, Any] = {"type": "integer"}
_N: dict[str, Any] = {"type": "number"}
_B: dict[str, Any] = {"type": "boolean"}


def _obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        **extra,
    }


SCHEMAS: dict[str, dict[str, Any]] = {
    "string": _S,
    "integer": _I,
    "number": _N,
    "boolean": _B,
    "null": {"type": "null"},
    "enum_str": {"enum": ["red", "green", "blue"]},
    "enum_mixed": {"enum": [1, "two", None, True]},
    "const": {"const": "fixed"},
    "int_bounds": {"type": "integer", "minimum": -5, "maximum": 42},
    "int_exclusive": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10},
    "number_bounds": {"type": "number", "minimum": 0, "maximum": 1},
    "string_pattern": {"type": "string", "pattern": "^[a-z]{2,5}-[0-9]{1,3}$"},
    "string_length": {"type": "string", "minLength": 2, "maxLength": 6},
    "string_enum_field": _obj({"unit": {"enum": ["cm", "m", "km"]}, "value": _N}),
    "flat_object": _obj({"name": _S, "age": _I, "active": _B}),
    "optional_fields": _obj({"id": _I, "nickname": _S, "score": _N}, required=["id"]),
    "all_optional": _obj({"a": _I, "b": _B}, required=[]),
    "nested_object": _obj({"user": _obj({"name": _S, "email": _S}), "count": _I}),
    "deep_nesting": _obj({"a": _obj({"b": _obj({"c": _obj({"d": _I})})})}),
    "array_ints": {"type": "array", "items": _I},
    "array_bounded": {"type": "array", "items": _I, "minItems": 2, "maxItems": 4},
    "array_exact": {"type": "array", "items": _B, "minItems": 3, "maxItems": 3},
    "array_of_objects": {
        "type": "array",
        "items": _obj({"x": _I, "y": _I}),
        "minItems": 1,
        "maxItems": 3,
    },
    "array_enum": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 5},
    "object_with_array": _obj({"tags": {"type": "array", "items": _S, "maxItems": 3}, "title": _S}),
    "tuple": {
        "type": "array",
        "prefixItems": [_I, _S, _B],
        "items": False,
    },
    "defs_ref": {
        "$defs": {"point": _obj({"x": _N, "y": _N})},
        **_obj({"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}}),
    },
    "defs_nested_ref": {
        "$defs": {
            "name": {"type": "string", "maxLength": 8},
            "person": _obj({"name": {"$ref": "#/$defs/name"}, "age": _I}),
        },
        **_obj({"owner": {"$ref": "#/$defs/person"}}),
    },
    "recursive_tree": {
        "$defs": {
            "node": _obj(
                {
                    "v": _I,
                    "kids": {"type": "array", "items": {"$ref": "#/$defs/node"}, "maxItems": 2},
                },
                required=["v"],
            )
        },
        "$ref": "#/$defs/node",
    },
    "anyof_scalar": {"anyOf": [_I, _S]},
    "anyof_objects": {
        "anyOf": [_obj({"kind": {"const": "a"}, "n": _I}), _obj({"kind": {"const": "b"}, "s": _S})]
    },
    "oneof_like_anyof_null": _obj({"maybe": {"anyOf": [_I, {"type": "null"}]}}),
    "type_list": {"type": ["integer", "boolean"]},
    "nullable_string": _obj({"note": {"type": ["string", "null"]}}),
    "allof_single": {"allOf": [_obj({"a": _I})]},
    "date_pattern": _obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}}),
    "bounded_fields": _obj(
        {
            "pct": {"type": "integer", "minimum": 0, "maximum": 100},
            "temp": {"type": "number", "minimum": -40, "maximum": 60},
        }
    ),
    "empty_object": {"type": "object", "properties": {}, "additionalProperties": False},
    "additional_props": {"type": "object", "additionalProperties": _I, "maxProperties": 3},
    "matrix": {
        "type": "array",
        "items": {"type": "array", "items": _I, "minItems": 2, "maxItems": 2},
        "minItems": 2,
        "maxItems": 2,
    },
    "address": _obj(
        {
            "street": {"type": "string", "maxLength": 12},
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "country": {"enum": ["DE", "FR", "US"]},
        },
        required=["zip", "country"],
    ),
    "event": _obj(
        {
            "type": {"const": "click"},
            "x": {"type": "integer", "minimum": 0, "maximum": 1920},
            "y": {"type": "integer", "minimum": 0, "maximum": 1080},
            "meta": _obj({"shift": _B}, required=[]),
        },
        required=["type", "x", "y"],
    ),
    "unicode_enum": {"enum": ["Köln", "日本", "ünïcödé"]},
    "escaped_keys": _obj({'we"ird': _I, "back\\slash": _B}),
    "string_with_format_like_pattern": {"type": "string", "pattern": "^[A-Z][a-z]+$"},
}
