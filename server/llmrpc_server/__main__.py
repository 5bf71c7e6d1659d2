"""``python -m llmrpc_server``."""

import sys

from .cli import main

sys.exit(main())
