"""Keeping the start of short-lived processes (a CLI command, a job runner) short."""

from __future__ import annotations

import sys
import types


def skip_httpx_cli() -> None:
    """httpx imports its own command-line client (click, rich, pygments: ~45 ms) when it is
    imported; a placeholder makes that import fail, which httpx expects and handles. Call it
    before httpx is first imported."""
    sys.modules.setdefault("httpx._main", types.ModuleType("httpx._main"))
