"""The ``forgehub`` program. ``forgehub module …`` (serving or running a module, where start-up
time counts) loads only its own command group; everything else loads the whole CLI."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["module"]:
        from forgehub.cli.module import app as module_app

        module_app(args=args[1:], prog_name="forgehub module")
        return
    from forgehub.cli.main import app

    app()
