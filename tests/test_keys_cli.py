"""``llmrpc-server keys new [--alias NAME]`` and ``llmrpc-server keys spend``; a bad ``keys:`` section stops
the server at startup naming the field."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml
from llmrpc_server.cli import main
from llmrpc_server.keys import SqliteLimitStore, hash_key, parse_keys

T0 = 1_800_000_000.0


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("LLMRPC_")}
    return subprocess.run([sys.executable, "-m", "llmrpc_server", *args], capture_output=True, text=True,
                          timeout=120, env={**clean, **(env or {})}, check=False)


def test_keys_new_prints_a_key_and_its_hash_entry() -> None:
    done = run("keys", "new", "--alias", "ci-bot")
    assert done.returncode == 0, done.stderr
    key = re.search(r"^key: (sk-[A-Za-z0-9_-]{40,})$", done.stdout, re.M)
    assert key is not None
    entry = yaml.safe_load("\n".join(line for line in done.stdout.splitlines() if line.startswith("  ")))
    assert entry == [{"key_alias": "ci-bot", "key_hash": hash_key(key.group(1))}]
    ring = parse_keys(entry)  # the printed entry is a valid keys: section that accepts the key
    assert ring.find(key.group(1)) is ring.keys[0]
    assert run("keys", "new").stdout != done.stdout  # fresh every time


def test_keys_spend_lists_spend_per_alias_and_window(tmp_path: Path, capsys: object) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"keys": [
        {"key": "sk-team-a-0123456789", "key_alias": "team-a", "max_budget": 10, "budget_duration": "30d"},
        {"key": "sk-team-b-0123456789", "key_alias": "team-b"},
    ]}))
    state = tmp_path / "state.sqlite"
    ring = parse_keys(yaml.safe_load(config.read_text())["keys"])
    store = SqliteLimitStore(str(state))
    a, b = ring.keys
    store.record_sync(a, T0, "", 10, 1.25)
    store.record_sync(a, T0 + 5, "", 10, 0.5)
    store.record_sync(b, T0, "", 10, 0.125)
    store.close()
    done = run("keys", "spend", "--config", str(config), "--state-path", str(state))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["key_alias", "window", "requests", "spend_usd", "max_budget"]
    a_line = next(line for line in lines if line.startswith("team-a"))
    assert a_line.split()[-3:] == ["2", "1.750000", "-"]  # that window is not the current one
    assert "+2592000s" in a_line
    b_line = next(line for line in lines if line.startswith("team-b"))
    assert "lifetime" in b_line and b_line.split()[-3:] == ["1", "0.125000", "-"]
    assert "sk-team" not in done.stdout


def test_bad_keys_section_stops_startup_naming_the_field(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"keys": [{"key": "sk-team-a-0123456789", "rpm_limit": "lots"}]}))
    done = run("--config", str(config), "--host", "127.0.0.1", "--port", "0")
    assert done.returncode != 0
    assert "bad setting: keys[0].rpm_limit: expected an integer >= 0" in done.stderr


def test_unknown_keys_action_is_a_usage_error() -> None:
    assert main(["keys", "rotate"]) == 2
