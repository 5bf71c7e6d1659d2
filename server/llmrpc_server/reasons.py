"""The ``ErrorInfo.reason`` of every failure the gateway sends: the one place reason names are written.

The contract is the ``ErrorReason`` enum of ``protos/llmrpc/v1/error_reason.proto`` (generated as
``llmrpc.v1.error_reason_pb2``); on the wire a reason is its name without the ``ERROR_REASON_``
prefix. :class:`Reason` spells each name once, so ``mypy`` rejects a misspelt ``Reason.X`` and
``ServiceError`` takes nothing else; this module refuses to import when its names and the
generated enum's differ, so neither can drift from the other.
"""

from __future__ import annotations

import enum

from llmrpc.v1 import error_reason_pb2

__all__ = ["PREFIX", "Reason", "contract_names"]

PREFIX = "ERROR_REASON_"


class Reason(enum.StrEnum):
    """An ``ErrorInfo.reason``; its value is its name (a ``str``, so it goes on the wire as it is)."""

    @staticmethod
    def _generate_next_value_(name: str, start: int, count: int, last_values: list[str]) -> str:
        return name

    INVALID_REQUEST = enum.auto()
    UNSUPPORTED_PARAMETER = enum.auto()
    UNKNOWN_PROVIDER = enum.auto()
    MODEL_NOT_FOUND = enum.auto()
    PROVIDER_BAD_REQUEST = enum.auto()
    CONTEXT_WINDOW_EXCEEDED = enum.auto()
    CONTENT_POLICY_VIOLATION = enum.auto()
    PROVIDER_AUTH_FAILED = enum.auto()
    PROVIDER_PERMISSION_DENIED = enum.auto()
    PROVIDER_API_KEY_MISSING = enum.auto()
    PROVIDER_CONFLICT = enum.auto()
    REQUEST_TOO_LARGE = enum.auto()
    PROVIDER_UNPROCESSABLE = enum.auto()
    RATE_LIMITED = enum.auto()
    QUOTA_EXCEEDED = enum.auto()
    PROVIDER_UNAVAILABLE = enum.auto()
    PROVIDER_OVERLOADED = enum.auto()
    PROVIDER_TIMEOUT = enum.auto()
    PROVIDER_UNREACHABLE = enum.auto()
    PROVIDER_BAD_RESPONSE = enum.auto()
    PROVIDER_STREAM_ERROR = enum.auto()
    API_KEY_INVALID = enum.auto()
    INTERNAL_ERROR = enum.auto()
    STREAM_IDLE_TIMEOUT = enum.auto()
    API_BASE_NOT_ALLOWED = enum.auto()
    BUDGET_EXCEEDED = enum.auto()
    MODEL_NOT_ALLOWED = enum.auto()
    KEY_STORE_UNAVAILABLE = enum.auto()


def contract_names() -> frozenset[str]:
    """The reasons ``error_reason.proto`` defines, as sent (``ERROR_REASON_UNSPECIFIED`` is none)."""
    return frozenset(name.removeprefix(PREFIX) for name, number in error_reason_pb2.ErrorReason.items() if number)


def _check() -> None:
    ours = {reason.value for reason in Reason}
    if ours != contract_names():
        raise ImportError(f"llmrpc_server.reasons.Reason differs from error_reason.proto: only here "
                          f"{sorted(ours - contract_names())}, only in the proto {sorted(contract_names() - ours)}")


_check()
