"""Protobuf <-> plain Python conversions shared by the adapters.

``google.protobuf.Struct`` carries every number as a double, so ``{"minItems": 2}`` arrives as
``2.0``; :func:`struct_to_dict` restores integral values to ``int`` so JSON Schemas stay valid for
providers that check types strictly.
"""

from __future__ import annotations

from typing import Any

import orjson
from google.protobuf import struct_pb2
from google.protobuf.message import Message

__all__ = [
    "canonical_json",
    "clear_field",
    "dumps",
    "has_field",
    "loads",
    "struct_to_dict",
    "value_to_python",
]


def value_to_python(value: struct_pb2.Value) -> Any:
    """One Struct ``Value`` as plain Python, integral doubles as ints (the client's ``_decode`` does the
    same; ``tests/test_struct_numbers.py`` holds both to the same answers)."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        # is_integer() is False for inf and nan, so they stay floats (int() would raise); past 2**53 a
        # double no longer holds every integer, so the sender's int cannot be known: keep the float.
        return int(number) if number.is_integer() and abs(number) < 2**53 else number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [value_to_python(v) for v in value.list_value.values]
    return None


def struct_to_dict(struct: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict (see :func:`value_to_python`)."""
    return {key: value_to_python(value) for key, value in struct.fields.items()}


def has_field(msg: Message, name: str) -> bool:
    """``HasField`` by a computed name (the generated stubs only accept literal names)."""
    return msg.HasField(name)


def clear_field(msg: Message, name: str) -> None:
    """``ClearField`` by a computed name."""
    msg.ClearField(name)


def dumps(obj: Any) -> bytes:
    """Compact JSON bytes (orjson: the hot path serializes every upstream body)."""
    return orjson.dumps(obj)


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ``orjson.JSONDecodeError`` (a ``ValueError``) on bad input."""
    return orjson.loads(data)


def canonical_json(obj: Any) -> bytes:
    """Key-order independent JSON, for hashing (cache keys)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)
