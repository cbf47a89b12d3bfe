"""How the CLI reports a failure: one red line on stderr and an exit code, never a traceback.

Kept apart from :mod:`forgehub.cli.client` (and its HTTP client) so commands that talk to no
server, such as ``forgehub module serve``, start without loading it.
"""

from __future__ import annotations

import json
import os
import sys
from types import TracebackType
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

    def plain(self) -> bool:
        """Output that rich would leave as it is: not a terminal (no colours), soft-wrapped (no
        line breaks added), colours not forced. It goes out without loading rich."""
        if self._real is not None or not self._options.get("soft_wrap"):
            return False
        if os.environ.get("FORCE_COLOR") or os.environ.get("TTY_COMPATIBLE") == "1":
            return False
        return not self._stream().isatty()

    def _stream(self) -> Any:
        return sys.stderr if self._options.get("stderr") else sys.stdout

    def line(self, text: str) -> None:
        """One line of plain text (no markup: names in it are printed as they are)."""
        if self.plain():
            self._stream().write(text + "\n")
        else:
            self.rich.print(text, markup=False)

    def print_json(self, text: str) -> None:
        """JSON indented as rich indents it, coloured only on a terminal."""
        if self.plain():
            doc = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            self._stream().write(doc + "\n")
        else:
            self.rich.print_json(text)


class Spinner:
    """rich's status spinner, shown only once there is something to wait for (``start``): a
    command that has its answer at once does not load rich for it."""

    def __init__(self, console: Console, text: str) -> None:
        self._console = console
        self._text = text
        self._status: Any = None

    def start(self, *_: object) -> None:
        if self._status is None:
            self._status = self._console.status(self._text)
            self._status.start()

    def __enter__(self) -> Spinner:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._status is not None:
            self._status.stop()


def Table(*args: Any, **kw: Any) -> Any:  # noqa: N802 - stands in for rich's class
    """A rich Table, importing rich when a command has its answer to show."""
    from rich.table import Table as RichTable

    return RichTable(*args, **kw)


err = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)
