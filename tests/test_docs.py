"""The README stays true: every setting and every provider prefix is documented."""

from __future__ import annotations

from pathlib import Path

from llmrpc_server.config import setting_fields
from llmrpc_server.providers import default_adapters

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name, *_ in setting_fields() if f"`--{name.replace('_', '-')}`" not in README]
    assert missing == []


def test_every_provider_prefix_is_in_the_provider_table() -> None:
    missing = [name for name in default_adapters() if f"`{name}/" not in README]
    assert missing == []


def test_readme_test_command_is_what_ci_runs() -> None:
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert "make test" in README and "make test" in ci


def test_configuration_table_is_generated_not_hand_edited() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    table = subprocess.run([sys.executable, "scripts/config_table.py"], cwd=root, capture_output=True, text=True,
                           check=True).stdout
    assert table.strip() in README


def test_no_file_refers_to_a_document_outside_the_repository() -> None:
    # Docstrings and comments once cited design notes that were never committed (a "§2" of some .md):
    # every Markdown file a tracked file names must be one the repository has.
    import re
    import subprocess

    root = Path(__file__).resolve().parent.parent
    tracked = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True, check=True).stdout.split()
    have = {Path(name).name for name in tracked if name.endswith(".md")}
    named = re.compile(r"[\w.-]+\.md\b")
    strays = []
    for name in tracked:
        path = root / name
        if name.startswith("gen/") or name.endswith(".lock") or not path.is_file():
            continue
        text = path.read_text(errors="ignore")
        strays += [f"{name}: {doc}" for doc in named.findall(text) if doc not in have]
    assert strays == []
