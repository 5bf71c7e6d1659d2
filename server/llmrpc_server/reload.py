"""SIGHUP: read the config file again and swap it in atomically.

The new settings and routing table are built completely first; a file that does not load keeps the
running config and logs why. The swap itself is a few reference assignments with no ``await`` in
between, so no call sees half of it; a call in flight keeps the model groups it read when it started.
Deployment counters and cooldowns carry over (the state object is shared by the old and new tables).
Settings that shape the listener or the process (port, TLS, auth tokens, callbacks, the cache file,
...) are logged as needing a restart when they change.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import fields, replace
from typing import Protocol

from .config import Settings
from .deployment_state import DeploymentState, LocalDeploymentState
from .deployments import DeploymentTable

__all__ = ["RESTART_ONLY", "Reconfigurable", "Reloader", "build_table"]

log = logging.getLogger("llmrpc_server")

# What a reload applies: the routing table, and the settings read per call.
_RELOADED = frozenset({
    "default_timeout", "stream_idle_timeout", "num_retries", "drop_params", "cache_default", "cache_ttl",
    "cache_namespace", "fallbacks", "context_window_fallbacks", "content_policy_fallbacks", "aliases", "env",
    "proxy", "config_warnings", "config_file", "flag_overrides", "fetch_media", "fetch_media_max_mb",
})
RESTART_ONLY = frozenset(f.name for f in fields(Settings)) - _RELOADED


class Reconfigurable(Protocol):
    """A component that takes the reloaded settings."""

    def reconfigure(self, settings: Settings, table: DeploymentTable | None) -> None: ...


def build_table(settings: Settings, state: DeploymentState) -> DeploymentTable | None:
    """The routing table of ``settings``' proxy config (None without a ``model_list``)."""
    return DeploymentTable.from_config(settings.proxy, state) if settings.proxy is not None else None


class Reloader:
    """Holds the running settings and swaps in a reloaded file on :meth:`reload`."""

    def __init__(self, settings: Settings, parts: list[Reconfigurable],
                 environ: Callable[[], Mapping[str, str]] = lambda: os.environ,
                 state: DeploymentState | None = None) -> None:
        self.settings = settings
        self.state: DeploymentState = state if state is not None else LocalDeploymentState()
        self.table = build_table(settings, self.state)
        self._parts = parts
        self._environ = environ

    def reload(self) -> bool:
        """Load the config file again; True when the new one is in use."""
        old = self.settings
        if not old.config_file:
            log.warning("SIGHUP: no config file to reload")
            return False
        try:
            new = Settings.load(old.flag_overrides, environ=self._environ(), config_file=old.config_file)
            table = build_table(new, self.state)
        except (ValueError, OSError) as exc:
            log.error("SIGHUP: %s not reloaded, keeping the running config: %s", old.config_file, exc)
            return False
        for warning in new.config_warnings:
            log.warning("%s", warning)
        changed = sorted(name for name in RESTART_ONLY if getattr(new, name) != getattr(old, name))
        if changed:
            log.warning("SIGHUP: %s changed; the new value takes effect after a restart", ", ".join(changed))
            new = replace(new, **{name: getattr(old, name) for name in changed})
        for part in self._parts:  # no await in this loop: the swap is atomic for the event loop
            part.reconfigure(new, table)
        self.settings, self.table = new, table
        log.info("SIGHUP: reloaded %s (%d deployments)", old.config_file, len(table.deployments) if table else 0)
        return True
