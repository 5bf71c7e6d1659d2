"""A real ``redis-server`` (Debian's package, installed by ``make test``) on a free loopback port.

No persistence, no config file: a throwaway instance per fixture. ``kill`` and ``start`` again on the
same port are how the tests take Redis down mid-run and bring it back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.envoy_front import wait_until
from tests.support import free_port

__all__ = ["RedisServer", "redis_binary", "running_redis"]


def redis_binary() -> str:
    """The ``redis-server`` binary, or skip with how to get it (``make test`` installs it)."""
    path = shutil.which("redis-server") or ("/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None)
    if path is None:
        pytest.skip("redis-server is not installed: run `sh scripts/install_redis.sh` (as root) or "
                    "`apt-get install redis-server`; `make test` does this")
    return path


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1:``port``."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        log = (self.workdir / f"redis-{self.port}.log").open("ab")
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(self._answers, 20, f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited {self.proc.returncode}: "
                               f"{(self.workdir / f'redis-{self.port}.log').read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def cli(self, *args: str) -> str:
        """One command through ``redis-cli`` (shipped with redis-server)."""
        cli = shutil.which("redis-cli") or "redis-cli"
        return subprocess.run([cli, "-p", str(self.port), *args], check=True, capture_output=True,
                              text=True, timeout=10).stdout.strip()


@contextmanager
def running_redis(workdir: Path) -> Iterator[RedisServer]:
    server = RedisServer(workdir).start()
    try:
        yield server
    finally:
        server.kill()
