"""The ``forgehub`` program. A command group (``forgehub artifact …``, ``forgehub job …``, …)
and the top-level commands that live in a group's module (``forgehub train``, ``deploy``,
``share``) load only that module, so a command starts in the time its own imports take;
anything else (``serve``, ``--help``, ``--version``) loads the whole CLI."""

from __future__ import annotations

import sys

from forgehub.fastimport import skip_httpx_cli

# group name → (module, the Typer app's attribute); each is also registered in cli.main, and
# has several commands (a Typer app with one command would run it instead of dispatching)
GROUPS = {
    "artifact": ("forgehub.cli.artifacts", "artifact_app"),
    "storage": ("forgehub.cli.artifacts", "storage_app"),
    "catalog": ("forgehub.cli.catalog", "app"),
    "compute": ("forgehub.cli.compute", "compute_app"),
    "deployment": ("forgehub.cli.deployments", "app"),
    "group": ("forgehub.cli.groups", "app"),
    "quota": ("forgehub.cli.groups", "quota_app"),
    "job": ("forgehub.cli.jobs", "job_app"),
    "module": ("forgehub.cli.module", "app"),
    "pipeline": ("forgehub.cli.pipelines", "app"),
    "user": ("forgehub.cli.users", "user_app"),
    "token": ("forgehub.cli.users", "token_app"),
}


# top-level command → (module, function); each is also registered in cli.main
COMMANDS = {
    "train": ("forgehub.cli.jobs", "train"),
    "deploy": ("forgehub.cli.deployments", "deploy"),
    "share": ("forgehub.cli.groups", "share"),
    "unshare": ("forgehub.cli.groups", "unshare"),
}


def main() -> None:
    skip_httpx_cli()
    args = sys.argv[1:]
    if args[:2] == ["module", "serve"]:
        import gc

        # start-up is mostly imports: the collector's passes over them are a tenth of it; the
        # server turns it back on once it has started (see forgehub.server.gcfreeze)
        gc.disable()
    if args[:1] and args[0] in GROUPS:
        import importlib

        module, attr = GROUPS[args[0]]
        group = getattr(importlib.import_module(module), attr)
        group(args=args[1:], prog_name=f"forgehub {args[0]}")
        return
    if args[:1] and args[0] in COMMANDS:
        import importlib

        import typer

        module, attr = COMMANDS[args[0]]
        one = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False)
        one.command(args[0])(getattr(importlib.import_module(module), attr))
        one(args=args[1:], prog_name=f"forgehub {args[0]}")  # one command: it runs it
        return
    from forgehub.cli.main import app

    app()
