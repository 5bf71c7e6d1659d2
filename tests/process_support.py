"""A server subprocess whose stderr is collected as it runs, so tests can wait for log lines."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

__all__ = ["ServerProcess"]


class ServerProcess:
    """``python -m llmrpc_server *args`` with no inherited provider keys or LLMRPC_* settings."""

    def __init__(self, tmp_path: Path, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("LLMRPC_")}
        env["LLMRPC_CACHE_PATH"] = str(tmp_path / "cache.sqlite")
        self.proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", *args], env=env,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def wait_for(self, text: str, count: int = 1, timeout: float = 60.0) -> None:
        """Block until ``text`` has appeared on ``count`` stderr lines."""
        deadline = time.monotonic() + timeout
        while sum(text in line for line in list(self._lines)) < count:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"never saw {count} x {text!r}; stderr:\n{self.stderr}")
            time.sleep(0.1)

    def stop(self) -> str:
        """SIGTERM, wait, and return everything written to stderr."""
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return self.stderr
