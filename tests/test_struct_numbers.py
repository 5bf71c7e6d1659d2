"""``google.protobuf.Struct`` numbers as plain Python: the server's ``proto_json.struct_to_dict`` and the
client's ``_decode.struct_to_dict`` (two packages, one behaviour). Struct carries only doubles, so
integral values come back as ints; infinities, NaN and integers past 2**53 stay floats."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
from google.protobuf import struct_pb2
from llmrpc._decode import struct_to_dict as client_struct_to_dict
from llmrpc_server.proto_json import struct_to_dict as server_struct_to_dict

SIDES = [pytest.param(server_struct_to_dict, id="server"), pytest.param(client_struct_to_dict, id="client")]
Convert = Callable[[struct_pb2.Struct], dict[str, Any]]


def _struct(value: Any) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update({"v": value})
    return struct


@pytest.mark.parametrize("convert", SIDES)
@pytest.mark.parametrize(("sent", "expected"), [
    (2, 2), (2.0, 2), (-3.0, -3), (0.5, 0.5), (-0.0, 0), (2.0**53 - 1, 2**53 - 1),
    (2.0**53, 2.0**53), (1e300, 1e300),
    (math.inf, math.inf), (-math.inf, -math.inf),
])  # fmt: skip
def test_numbers(convert: Convert, sent: float, expected: float) -> None:
    got = convert(_struct(sent))["v"]
    assert got == expected and type(got) is type(expected)


@pytest.mark.parametrize("convert", SIDES)
def test_nan_stays_a_float(convert: Convert) -> None:
    got = convert(_struct(math.nan))["v"]
    assert isinstance(got, float) and math.isnan(got)


@pytest.mark.parametrize("convert", SIDES)
def test_nested_values(convert: Convert) -> None:
    data = {"minItems": 2.0, "items": [1.0, 1.5, "x", True, None, {"inf": math.inf}], "o": {"n": 3.0}}
    assert convert(_struct(data))["v"] == {
        "minItems": 2, "items": [1, 1.5, "x", True, None, {"inf": math.inf}], "o": {"n": 3},
    }
