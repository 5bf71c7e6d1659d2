"""Print the README's configuration table from the settings' own help texts."""

from __future__ import annotations

from llmrpc_server.config import setting_fields


def main() -> None:
    print("| flag | environment variable | default | meaning |")
    print("|---|---|---|---|")
    for name, _kind, default, help_text in setting_fields():
        shown = "~/.cache/llmrpc/cache.sqlite" if name == "cache_path" else repr(default)
        print(f"| `--{name.replace('_', '-')}` | `LLMRPC_{name.upper()}` | `{shown}` | {help_text} |")


if __name__ == "__main__":
    main()
