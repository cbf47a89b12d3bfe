"""``forgehub worker``: connect this machine as a worker."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from forgehub.cli.client import fail
from forgehub.cli.messages import Console

err = Console(stderr=True, soft_wrap=True)


def worker(
    server: str = typer.Option(
        None, "--server", envvar="FORGEHUB_URL", help="Server URL [default: from forgehub login]."
    ),
    token: str = typer.Option(
        None,
        "--token",
        envvar="FORGEHUB_TOKEN",
        help="Your API token; prefer FORGEHUB_TOKEN, --token-file or `forgehub login` "
        "(a value on the command line shows in `ps`).",
        show_default=False,
    ),
    token_file: Path = typer.Option(
        None, "--token-file", help="Read the API token from this file.", show_default=False
    ),
    name: str = typer.Option(None, "--name", help="Worker name [default: the hostname]."),
    labels: str = typer.Option("", "--labels", help="Comma-separated labels, e.g. gpu,a100."),
    cpus: float = typer.Option(None, "--cpus", help="CPUs to offer [default: all]."),
    gpus: int = typer.Option(
        None,
        "--gpus",
        help="GPUs to offer [default: those found by NVML or nvidia-smi]; each job gets its "
        "own through CUDA_VISIBLE_DEVICES.",
        show_default=False,
    ),
    memory: int = typer.Option(0, "--memory", help="Memory to offer, MiB (0: unlimited)."),
    shared: bool = typer.Option(
        False,
        "--shared",
        help="Admins: also run other users' module jobs that allow it (never commands).",
    ),
    max_jobs: int = typer.Option(
        0, "--max-jobs", help="Jobs at once [default: one per CPU].", show_default=False
    ),
    burst: bool = typer.Option(False, "--burst", help="Exit when the queue is empty."),
    sandbox: bool = typer.Option(
        False,
        "--sandbox",
        help="Run module code in a bubblewrap sandbox: no network, only its work directory "
        "writable, nothing of this machine's users visible (needs bubblewrap).",
    ),
) -> None:
    """Connect this machine as a worker. Only outbound connections: it long-polls for jobs."""
    import logging

    from forgehub.cli.client import read_token_file, saved_login
    from forgehub.worker import WorkerAgent

    if any(a == "--token" or a.startswith("--token=") for a in sys.argv):
        err.print(
            "[yellow]warning:[/yellow] a token on the command line is visible to every user of "
            "this machine (ps); use FORGEHUB_TOKEN, --token-file or `forgehub login`"
        )
    login = saved_login()
    if token_file is not None:
        token = read_token_file(token_file)
    token = token or login.get("token", "")
    server = server or login.get("server", "")
    if not server or not token:
        fail(
            "no server or token: run `forgehub login --server URL` first, or set FORGEHUB_URL "
            "and FORGEHUB_TOKEN (or --token-file)"
        )
    if sandbox:
        import os
        import shutil

        if shutil.which("bwrap") is None:
            fail("--sandbox needs bubblewrap: apt install bubblewrap")
        os.environ["FORGEHUB_SANDBOX"] = "on"  # the runners this worker starts read it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    agent = WorkerAgent(
        server=server,
        token=token,
        labels=[x.strip() for x in labels.split(",") if x.strip()],
        gpus=gpus,
        memory_mb=memory,
        shared=shared,
        max_jobs=max_jobs,
        burst=burst,
    )
    if name:
        agent.name = name
    if cpus:
        agent.cpus = cpus
    agent.install_signals()
    try:
        raise typer.Exit(agent.run())
    except PermissionError as exc:
        fail(f"the server refused this worker: {exc}")
    except KeyboardInterrupt:
        sys.exit(130)
