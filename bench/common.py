"""Helpers every benchmark shares: ports, processes, CPU time from ``/proc`` and the bench request.

A leaf module: it imports nothing from ``bench``, so the benchmarks import it (and ``__main__``
imports them) one way, with no import circle.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from llmrpc.v1 import chat_pb2
from llmrpc.v1 import completion_service_pb2 as pb

__all__ = ["CLK_TCK", "HERE", "children", "cpu_seconds", "free_port", "process_cpu_seconds", "request", "start",
           "wait_port"]

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the processes (and their reaped children), from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(x) for x in fields[11:15])
    return total / CLK_TCK


def process_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of process ``pid``, with nanosecond resolution: its CPU-time clock
    (``clock_getcpuclockid``'s id, built as glibc builds it) where /proc counts 10 ms ticks, so that
    turns of a few hundred calls can be timed."""
    return time.clock_gettime_ns((~pid << 3) | 2) / 1e9


def children(pid: int) -> list[int]:
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    except FileNotFoundError:
        return []
    return [int(p) for p in out.split()]


def request(upstream_port: int = 0, model: str = "openai/bench-model") -> pb.CompleteRequest:
    """The request every gateway benchmark sends (``upstream_port`` is unused, kept for callers)."""
    return pb.CompleteRequest(model=model, messages=[chat_pb2.Message(role="user", content="Say something.")])


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {port}")
