"""How the CLI reports a failure: one red line on stderr and an exit code, never a traceback.

Kept apart from :mod:`forgehub.cli.client` (and its HTTP client) so commands that talk to no
server, such as ``forgehub module serve``, start without loading it.
"""

from __future__ import annotations

from typing import Any, NoReturn

import typer


class Console:
    """rich's Console, made when it first prints: rich is a fifth of a command's start, and a
    command's request can go out before it (see benchmarks/cli.py)."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._real: Any = None

    @property
    def rich(self) -> Any:
        """The rich Console itself (for rich's own objects, e.g. a Progress)."""
        if self._real is None:
            from rich.console import Console as RichConsole

            self._real = RichConsole(**self._options)
        return self._real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rich, name)


def Table(*args: Any, **kw: Any) -> Any:  # noqa: N802 - stands in for rich's class
    """A rich Table, importing rich when a command has its answer to show."""
    from rich.table import Table as RichTable

    return RichTable(*args, **kw)


err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)
