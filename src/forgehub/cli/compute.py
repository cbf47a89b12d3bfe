"""``forgehub compute``: compute connections and workers."""

from __future__ import annotations

import json
from typing import Any

import typer

from forgehub.cli.artifacts import connection_config
from forgehub.cli.client import Client, ServerOpt, TokenOpt, fail
from forgehub.cli.messages import Console, Table

compute_app = typer.Typer(
    rich_markup_mode=None,
    help="Compute connections: the server, your workers, Slurm and Ray clusters.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


# -- compute ------------------------------------------------------------------------------------


@compute_app.command("add")
def compute_add(
    name: str = typer.Argument(..., help="A name for the connection."),
    kind: str = typer.Argument(..., help="worker, slurm, ray (local: admins)."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="KEY=VALUE setting (repeat), e.g. partition=gpu address=http://ray-head:8265",
    ),
    secret: list[str] = typer.Option(
        [], "--secret", help="KEY=ENVVAR: read a secret (e.g. ssh_key) from the environment."
    ),
    no_test: bool = typer.Option(False, "--no-test", help="Save without testing it first."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Add a compute connection; it is tested before it is saved."""
    config = connection_config(set_, secret)
    conn = Client(server, token).post(
        "/api/v1/compute/connections",
        json={"name": name, "kind": kind, "config": config, "test": not no_test},
    )
    out.print(f"added {conn['kind']} connection {conn['name']}")


@compute_app.command("test")
def compute_test(name: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Test a compute connection and show its capacity."""
    r = Client(server, token).post(f"/api/v1/compute/connections/{name}/test")
    if not r["ok"]:
        fail(f"{name}: {r['detail']}")
    cap = r["capacity"]
    out.print(
        f"{name}: ok — {cap['cpus']:g} CPUs, {cap['gpus']} GPUs, {cap['memory_mb']} MiB"
        + (f", {cap['slots']} jobs at once" if cap["slots"] else "")
        + ("".join(f"\n  {n}" for n in cap["notes"]))
    )


@compute_app.command("ls")
def compute_ls(as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """List your compute connections and the workers you can use."""
    c = Client(server, token)
    conns = c.get("/api/v1/compute/connections")
    workers = c.get("/api/v1/workers")
    if as_json:
        out.print_json(json.dumps({"connections": conns, "workers": workers}))
        return
    table = Table("name", "kind", "config", "default")
    for x in conns:
        table.add_row(x["name"], x["kind"], json.dumps(x["config"]), "yes" if x["default"] else "")
    out.print(table)
    wt = Table("worker", "online", "cpus", "gpus", "memory", "labels", "running", "last seen")
    for w in workers:
        wt.add_row(
            w["name"],
            "yes" if w["online"] else "no",
            f"{w['cpus']:g}",
            _gpus(w),
            f"{w['memory_mb']} MiB",
            ",".join(w["labels"]),
            str(w["running_jobs"]),
            w["last_seen_at"][:19].replace("T", " "),
        )
    out.print(wt)


def _gpus(w: dict[str, Any]) -> str:
    """``2 × NVIDIA A100-SXM4-80GB (80 GiB)``, or the count where models are unknown."""
    models = w.get("gpu_models") or []
    if not models:
        return str(w["gpus"])
    memory = w.get("gpu_memory_mb") or [0] * len(models)
    kinds: dict[str, int] = {}
    for model, mem in zip(models, memory, strict=False):
        label = f"{model} ({mem / 1024:.0f} GiB)" if mem else str(model)
        kinds[label] = kinds.get(label, 0) + 1
    return ", ".join(f"{n} × {label}" for label, n in kinds.items())


@compute_app.command("rm")
def compute_rm(name: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Remove a compute connection."""
    Client(server, token).delete(f"/api/v1/compute/connections/{name}")
    out.print(f"removed {name}")


# -- one-liners ---------------------------------------------------------------------------------
