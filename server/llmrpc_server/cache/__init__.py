"""The response cache: ``store`` keeps entries (SQLite by default), ``backend`` is the layer of the
backend chain that answers from it and fills it."""

from __future__ import annotations

from .backend import CachingBackend
from .store import ResponseCache, cache_command

__all__ = ["CachingBackend", "ResponseCache", "cache_command"]
