"""``CustomLogger``: LiteLLM's base class for callback objects (``litellm.integrations.custom_logger``).

Subclass it and put an instance in ``llmrpc.callbacks`` (or ``input_callback`` / ``success_callback`` /
``failure_callback``). The methods have LiteLLM's names and arguments and run in this process, off the
calling thread: ``log_pre_api_call`` as a call starts, then ``log_post_api_call`` and
``log_success_event`` or ``log_failure_event`` for ``completion()``; ``acompletion()`` calls the
``async_`` forms of the success and failure methods (and ``async_log_pre_api_call``) on its loop.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

__all__ = ["CustomLogger"]


class CustomLogger:
    """No-op hooks to override; ``kwargs`` is the call's arguments (never ``api_key``)."""

    def __init__(self, turn_off_message_logging: bool = False, message_logging: bool = True, **kwargs: Any) -> None:
        self.turn_off_message_logging = turn_off_message_logging
        self.message_logging = message_logging

    def log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        """Before the call goes to the gateway."""

    def log_post_api_call(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime | None) -> None:
        """After the gateway answered (LiteLLM passes no response here either)."""

    def log_stream_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                         end_time: datetime) -> None:
        """Not called (LiteLLM no longer calls it either); a stream reports through log_success_event."""

    def log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        """``completion()`` answered; for a stream, once it is exhausted, with the rebuilt response."""

    def log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                          end_time: datetime) -> None:
        """``completion()`` failed; ``kwargs["exception"]`` holds the exception."""

    async def async_log_stream_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                     end_time: datetime) -> None:
        """Not called; see :meth:`log_stream_event`."""

    async def async_log_pre_api_call(self, model: str, messages: Any, kwargs: dict[str, Any]) -> None:
        """Before an ``acompletion()`` call goes to the gateway."""

    async def async_log_success_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        """``acompletion()`` answered."""

    async def async_log_failure_event(self, kwargs: dict[str, Any], response_obj: Any, start_time: datetime,
                                      end_time: datetime) -> None:
        """``acompletion()`` failed."""
