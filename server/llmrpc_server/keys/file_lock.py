"""Who else uses a key state file: POSIX record locks (``fcntl``) on a sidecar ``<state>-llmrpc.lock``.

Byte 0 is the *mode*: every process deciding admissions in SQLite transactions holds a read lock on
it; a process that is the file's only user may hold a write lock instead and decide in memory (see
``store``). Byte 1 is *presence*: every process that uses the file holds a read lock on it from its
first use to its close, so an exclusive process can see a newcomer and hand the file over.

POSIX locks belong to a process, not to a file descriptor, and closing any descriptor of the file
drops them all: so one :class:`StateFileLock` per file per process, shared by that process's stores
(:func:`acquire`), which counts them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no POSIX locks, so every process uses transactions
    fcntl = None  # type: ignore[assignment]

__all__ = ["SUPPORTED", "StateFileLock", "acquire"]

SUPPORTED = fcntl is not None

_MODE, _PRESENCE = 0, 1
_REGISTRY: dict[str, StateFileLock] = {}
_REGISTRY_LOCK = threading.Lock()


class StateFileLock:
    """This process's locks on one state file's sidecar."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.users = 0  # stores of this process using the file
        try:  # blocks only while an exclusive process looks for newcomers (two system calls)
            fcntl.lockf(self._fd, fcntl.LOCK_SH, 1, _PRESENCE)
        except OSError:
            os.close(self._fd)
            raise
        self.exclusive = False
        # the store holding the file exclusively, and how to ask it (from any thread) to hand it over
        self.holder: object | None = None
        self.hand_over: Callable[[], None] | None = None

    def share(self, store: object, timeout: float) -> bool:
        """Hold the mode byte shared for ``store`` (its downgrade, when it held it exclusively), waiting
        up to ``timeout`` seconds for an exclusive store, here or in another process, to hand over."""
        deadline = time.monotonic() + timeout
        asked = False
        while True:
            if self.exclusive and self.holder is not store:  # another store of this process: ask it
                if not asked and self.hand_over is not None:
                    self.hand_over()
                    asked = True
            else:
                try:
                    fcntl.lockf(self._fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, _MODE)
                    self.exclusive, self.holder, self.hand_over = False, None, None
                    return True
                except OSError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)

    def try_exclusive(self, store: object, hand_over: Callable[[], None]) -> bool:
        """Upgrade the mode byte to a write lock for ``store``, the only store of this process on the
        file: True when no other process holds it."""
        with _REGISTRY_LOCK:
            if self.users != 1:
                return False
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _MODE)
            except OSError:
                return False
            self.exclusive, self.holder, self.hand_over = True, store, hand_over
            return True

    def others_present(self) -> bool:
        """Whether another process uses the file (holds its presence lock)."""
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _PRESENCE)
        except OSError:
            return True
        fcntl.lockf(self._fd, fcntl.LOCK_SH, 1, _PRESENCE)  # back to shared: converting never waits
        return False

    def release(self) -> None:
        """One store of this process is done with the file; the last one drops the locks."""
        with _REGISTRY_LOCK:
            self.users -= 1
            if self.users > 0:
                return
            _REGISTRY.pop(self.path, None)
        os.close(self._fd)  # drops every lock of this process on the file


def acquire(state_path: str) -> StateFileLock:
    """The lock of ``state_path``'s sidecar for one more store of this process."""
    path = str(Path(state_path).resolve()) + "-llmrpc.lock"
    with _REGISTRY_LOCK:
        lock = _REGISTRY.get(path)
        if lock is None:
            lock = _REGISTRY[path] = StateFileLock(path)
        lock.users += 1
        return lock
