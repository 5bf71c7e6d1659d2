"""``llmrpc-server`` / ``python -m llmrpc_server``: serve (the default) and maintenance commands.

Every setting is a flag (``--stream-idle-timeout 30``) and an environment variable
(``LLMRPC_STREAM_IDLE_TIMEOUT=30``); flags win. Provider keys come from LiteLLM's variable names
(``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ...).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .config import Settings, setting_fields

__all__ = ["main"]

_COMMANDS: dict[str, Callable[[Settings, argparse.Namespace], int]] = {}


def _cache(settings: Settings, args: argparse.Namespace) -> int:
    from .cache.store import cache_command  # imported on use: serving does not need the CLI's code path

    return cache_command(settings, args)


_COMMANDS["cache"] = _cache


def _keys(settings: Settings, args: argparse.Namespace) -> int:
    from .keys.command import keys_command

    return keys_command(settings, args)


_COMMANDS["keys"] = _keys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrpc-server", description="llmrpc gRPC gateway")
    parser.add_argument("command", nargs="?", default="serve", help="serve (default), or: cache, keys")
    parser.add_argument("action", nargs="?", help="for `cache`: stats, clear or prune; for `keys`: new or spend")
    parser.add_argument("--alias", help="for `keys new`: the new key's key_alias")
    parser.add_argument("--config", help="config file: a LiteLLM proxy config.yaml, or setting names -> values "
                                         "as JSON/YAML (also LLMRPC_CONFIG)")
    for name, kind, default, help_text in setting_fields():
        flag = "--" + name.replace("_", "-")
        if kind == "bool":
            parser.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None,
                                help=f"{help_text} (default {default})")
        elif kind.startswith("Mapping"):
            parser.add_argument(flag, dest=name, type=json.loads, default=None, help=f"{help_text} (JSON)")
        else:
            parser.add_argument(flag, dest=name, default=None, help=f"{help_text} (default {default!r})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {n: getattr(args, n) for n, *_ in setting_fields()}
    try:
        settings = Settings.load(overrides, config_file=args.config)
    except (ValueError, OSError) as exc:
        print(f"llmrpc-server: bad setting: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        from .app import run

        run(settings)
        return 0
    command = _COMMANDS.get(args.command)
    if command is None:
        print(f"llmrpc-server: unknown command {args.command!r}", file=sys.stderr)
        return 2
    return command(settings, args)


if __name__ == "__main__":
    sys.exit(main())
