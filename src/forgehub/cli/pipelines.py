"""``forgehub pipeline``: validate, run, follow, cancel and resume pipelines."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from forgehub.cli.client import Client, ServerOpt, TokenOpt, fail, key_values
from forgehub.cli.messages import Console, Table

app = typer.Typer(
    rich_markup_mode=None,
    help="Pipelines: steps passing artifacts, each a job on its own compute.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
COLOURS = {
    "waiting": "dim",
    "queued": "yellow",
    "running": "cyan",
    "succeeded": "green",
    "cached": "green",
    "failed": "red",
    "cancelled": "magenta",
    "cancelling": "magenta",
}
SetOpt = typer.Option(
    [], "--set", "-p", help="Parameter NAME=VALUE (repeat); VALUE is read as JSON if it parses."
)
StepOpt = typer.Option(
    [],
    "--step",
    help="Per-step choice STEP.compute=NAME, STEP.storage=NAME or STEP.cpu=N (repeat).",
)


def _definition(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as exc:
        fail(f"cannot read {path}: {exc.strerror}")


def _steps(pairs: list[str]) -> dict[str, Any]:
    steps: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        step, dot, field = key.partition(".")
        if not sep or not dot:
            fail(f"--step expects STEP.FIELD=VALUE, got {pair!r}")
        mine = steps.setdefault(step, {})
        if field in ("compute", "storage"):
            mine[field] = value
        elif field in ("cpu", "memory_mb", "gpus", "time_limit_s"):
            try:
                mine.setdefault("resources", {})[field] = json.loads(value)
            except ValueError:
                fail(f"--step {key}: {value!r} is not a number")
        else:
            fail(f"--step {key}: FIELD is compute, storage, cpu, memory_mb, gpus or time_limit_s")
    return steps


def _show(run: dict[str, Any]) -> None:
    table = Table("step", "what", "state", "job", "outputs")
    for s in run["steps"]:
        state = s["state"] + (f" (from run {s['cached_from'][:12]})" if s["cached_from"] else "")
        outs = ", ".join(f"{k}={v['digest'][:19]}…" for k, v in s["outputs"].items())
        colour = COLOURS.get(s["state"], "")
        table.add_row(
            s["name"],
            f"{s['kind']} {s['what']}",
            f"[{colour}]{state}[/]",
            (s["job"] or "")[:12],
            outs,
        )
    out.print(table)
    colour = COLOURS.get(run["state"], "")
    out.print(
        f"run {run['id']}  [{colour}]{run['state']}[/]"
        + (f": {run['error']}" if run["error"] else "")
    )


def _wait(c: Client, run_id: str) -> dict[str, Any]:
    """Follow a run until it ends, printing each step's changes."""
    seen: dict[str, str] = {}
    while True:
        run = c.get(f"/api/v1/pipeline-runs/{run_id}")
        for s in run["steps"]:
            if seen.get(s["name"]) != s["state"]:
                seen[s["name"]] = s["state"]
                colour = COLOURS.get(s["state"], "")
                extra = f"  job {s['job'][:12]}" if s["job"] and s["state"] == "queued" else ""
                extra += f"  {s['error']}" if s["error"] else ""
                err.print(f"  {s['name']:<16} [{colour}]{s['state']}[/]{extra}")
        if run["state"] not in ("running", "cancelling"):
            return run
        time.sleep(0.5)


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="The pipeline's YAML file."),
    set_: list[str] = SetOpt,
    on: str = typer.Option(None, "--on", help="Compute of every step [default: local]."),
    store: str = typer.Option(None, "--store", help="Storage of every step's output."),
    step: list[str] = StepOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Check a pipeline as a whole, against the server (nothing runs)."""
    body = {
        "definition": _definition(file),
        "params": key_values(set_),
        "on": on,
        "store": store,
        "steps": _steps(step),
    }
    r = Client(server, token).post("/api/v1/pipelines/validate", json=body)
    out.print(f"{r['name']}: valid; steps in order: {' → '.join(r['order'])}")


@app.command("run")
def run(
    file: Path = typer.Argument(None, help="The pipeline's YAML file (or --name)."),
    name: str = typer.Option(None, "--name", help="A saved pipeline instead of a file."),
    set_: list[str] = SetOpt,
    on: str = typer.Option(None, "--on", help="Compute of every step [default: local]."),
    store: str = typer.Option(None, "--store", help="Storage of every step's output."),
    step: list[str] = StepOpt,
    no_cache: bool = typer.Option(False, "--no-cache", help="Run unchanged steps again too."),
    detach: bool = typer.Option(False, "--detach", "-d", help="Start it and return."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Run a pipeline: each step a job, as soon as its inputs exist; follows it to the end."""
    if (file is None) == (name is None):
        fail("give a pipeline file or --name of a saved one")
    body: dict[str, Any] = {
        "params": key_values(set_),
        "on": on,
        "store": store,
        "steps": _steps(step),
        "no_cache": no_cache,
    }
    if file is not None:
        body["definition"] = _definition(file)
    else:
        body["pipeline"] = name
    c = Client(server, token)
    r = c.post("/api/v1/pipeline-runs", json=body)
    err.print(f"run {r['id']} of {r['pipeline']} started")
    if detach:
        out.print(r["id"])
        return
    final = _wait(c, r["id"])
    _show(final)
    if final["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Your pipelines and their last runs."""
    rows = Client(server, token).get("/api/v1/pipelines")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "steps", "last run", "state")
    for p in rows:
        last = p["last_run"] or {}
        table.add_row(
            p["name"], ", ".join(p["steps"]), last.get("id", "")[:12], last.get("state", "")
        )
    out.print(table)


@app.command("show")
def show(
    run_id: str = typer.Argument(..., help="A run id (or its start)."),
    prov: bool = typer.Option(False, "--prov", help="Print its provenance as W3C PROV-JSON."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """A run: its steps, their states, jobs and outputs (or its provenance)."""
    c = Client(server, token)
    if prov:
        out.print_json(json.dumps(c.get(f"/api/v1/pipeline-runs/{run_id}/prov")))
        return
    r = c.get(f"/api/v1/pipeline-runs/{run_id}")
    if as_json:
        out.print_json(json.dumps(r))
        return
    _show(r)


@app.command("cancel")
def cancel(run_id: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Cancel a run and its running steps."""
    r = Client(server, token).post(f"/api/v1/pipeline-runs/{run_id}/cancel")
    out.print(f"run {r['id']}: {r['state']}")


@app.command("resume")
def resume(
    run_id: str,
    set_: list[str] = SetOpt,
    on: str = typer.Option(None, "--on", help="Compute of the steps that run again."),
    store: str = typer.Option(None, "--store", help="Storage of their outputs."),
    step: list[str] = StepOpt,
    detach: bool = typer.Option(False, "--detach", "-d", help="Start it and return."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Run a failed or cancelled run's failed steps again (and what waits for them)."""
    c = Client(server, token)
    body = {"params": key_values(set_), "on": on, "store": store, "steps": _steps(step)}
    r = c.post(f"/api/v1/pipeline-runs/{run_id}/resume", json=body)
    if detach:
        out.print(r["id"])
        return
    final = _wait(c, r["id"])
    _show(final)
    if final["state"] != "succeeded":
        raise typer.Exit(1)


@app.command("logs")
def logs(
    run_id: str,
    step: str = typer.Argument(..., help="The step whose job's log to print."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Print a step's log (its job's)."""
    c = Client(server, token)
    r = c.get(f"/api/v1/pipeline-runs/{run_id}")
    found = [s for s in r["steps"] if s["name"] == step]
    if not found:
        fail(
            f"run {run_id} has no step {step!r} (steps: {', '.join(s['name'] for s in r['steps'])})"
        )
    if not found[0]["job"]:
        fail(f"step {step} has no job ({found[0]['state']})")
    page = c.get(f"/api/v1/jobs/{found[0]['job']}/logs")
    for _t, stream, text, *_ in page["lines"]:
        (err if stream == "stderr" else out).print(text, markup=False, highlight=False)
