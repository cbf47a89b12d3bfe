"""The ``forgehub`` program. ``forgehub module …`` (serving or running a module, where start-up
time counts) loads only its own command group; everything else loads the whole CLI."""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args[:2] == ["module", "serve"]:
        import gc

        # start-up is mostly imports: the collector's passes over them are a tenth of it; the
        # server turns it back on once it has started (see forgehub.server.gcfreeze)
        gc.disable()
    if args[:1] == ["module"]:
        from forgehub.cli.module import app as module_app

        module_app(args=args[1:], prog_name="forgehub module")
        return
    from forgehub.cli.main import app

    app()
