"""How the CLI reports a failure: one red line on stderr and an exit code, never a traceback.

Kept apart from :mod:`forgehub.cli.client` (and its HTTP client) so commands that talk to no
server, such as ``forgehub module serve``, start without loading it.
"""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)
