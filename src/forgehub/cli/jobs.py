"""``forgehub job`` and ``forgehub train``."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import typer

from forgehub.cli.client import (
    Client,
    ServerOpt,
    TokenOpt,
    exit_for,
    fail,
    httpx_module,
    key_values,
    unique_id,
)
from forgehub.cli.messages import Console, Table
from forgehub.errors import from_answer

job_app = typer.Typer(
    rich_markup_mode=None,
    help="Jobs: submit, follow, cancel, retry; and the job runner.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
FINISHED = {"succeeded", "failed", "cancelled"}
COLOURS = {"succeeded": "green", "failed": "red", "cancelled": "yellow", "running": "cyan"}


def _state(s: str) -> str:
    c = COLOURS.get(s)
    return f"[{c}]{s}[/{c}]" if c else s


ModuleHelp = (
    "Module: an installed or catalogued name, or its source: git+URL@ref (a branch, tag or "
    "commit), pip:REQUIREMENT, wheel:ARTIFACT (see forgehub module push)."
)
NameOpt = typer.Option(
    None, "--name", help="With a source: the module's name [default: the repository's]."
)
PublishVersionOpt = typer.Option(
    None,
    "--publish-version",
    help="Publish the weights under this version name [with --publish alone: trained-<job id>].",
)


def _job_body(
    kind: str,
    module: str | None,
    args: list[str],
    inputs: list[str],
    compute: str,
    storage: str | None,
    resources: dict[str, Any],
    *,
    labels: list[str] | None = None,
    output: str | None = None,
    command: list[str] | None = None,
    publish: bool = False,
    shared_workers: bool = False,
    version: str | None = None,
    publish_version: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """A job spec for POST /api/v1/jobs from the command line's options. ``module`` may be a
    module's source (git+URL@ref, pip:REQUIREMENT, wheel:ARTIFACT); ``name`` then names it."""
    from forgehub.envs.sources import SourceError, parse

    try:
        source = module if module and parse(module) is not None else None
    except SourceError as exc:
        fail(str(exc))
    data = {}
    for pair in inputs:
        name, sep, ref = pair.partition("=")
        if not sep:
            name, ref = "dataset" if kind == "train" else "data", pair
        data[name] = ref
    return {
        "kind": kind,
        "module": name if source else module,
        "source": source,
        "args": key_values(args),
        "command": command or [],
        "inputs": data,
        "compute": compute,
        "storage": storage,
        "resources": resources,
        "version": version,
        "publish_version": publish_version,
        "labels": labels or [],
        "output": output,
        "publish": publish or bool(publish_version),  # naming the version asks for it
        "shared_workers": shared_workers,
    }


SharedWorkersOpt = typer.Option(
    False,
    "--shared-workers",
    help="On workers compute: also let shared workers (an admin's) run it; they never get "
    "your credentials.",
)


def _resources(
    cpu: float, gpu: int, memory: int, time_limit: int, gpu_type: str | None = None
) -> dict[str, Any]:
    res = {"cpu": cpu, "gpu": gpu, "memory_mb": memory, "time_limit_s": time_limit}
    return {**res, "gpu_model": gpu_type} if gpu_type else res


ArgOpt = typer.Option([], "--arg", "-a", help="NAME=VALUE module argument (repeat).")
InputOpt = typer.Option([], "--input", "-i", help="NAME=ARTIFACT input (repeat).")
ComputeOpt = typer.Option("local", "--on", help="Compute connection.")
StorageOpt = typer.Option(None, "--store", help="Storage connection for outputs [default]")
CpuOpt = typer.Option(1.0, "--cpu", help="CPU cores.")
GpuOpt = typer.Option(0, "--gpu", help="GPUs (each job gets its own).")
GpuTypeOpt = typer.Option(
    None,
    "--gpu-type",
    help="GPU model, e.g. A100 (Slurm --gres=gpu:TYPE:N, Ray accelerator_type, workers' models).",
)
MemOpt = typer.Option(0, "--memory", help="Memory in MiB (0: no limit).")
TimeOpt = typer.Option(3600, "--time-limit", help="Wall-clock limit in seconds.")
LabelOpt = typer.Option([], "--label", help="Worker label required (repeat).")
OutputOpt = typer.Option(None, "--output", help="Name of the output artifact.")
FollowOpt = typer.Option(False, "--follow", "-f", help="Stream the logs until the job ends.")


@job_app.command("submit")
def submit(
    module: str = typer.Argument(None, help=ModuleHelp),
    name: str = NameOpt,
    kind: str = typer.Option("train", "--kind", help="train, predict or command."),
    arg: list[str] = ArgOpt,
    input_: list[str] = InputOpt,
    on: str = ComputeOpt,
    store: str = StorageOpt,
    cpu: float = CpuOpt,
    gpu: int = GpuOpt,
    gpu_type: str = GpuTypeOpt,
    memory: int = MemOpt,
    time_limit: int = TimeOpt,
    label: list[str] = LabelOpt,
    output: str = OutputOpt,
    command: str = typer.Option(None, "--command", help="A command job's argv, as JSON list."),
    publish: bool = typer.Option(False, "--publish", help="Publish trained weights."),
    version: str = typer.Option(
        None,
        "--version",
        help="Predict: the module's pre-trained version to use [default: the newest].",
    ),
    publish_version: str = PublishVersionOpt,
    shared_workers: bool = SharedWorkersOpt,
    follow: bool = FollowOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Submit a job (training, batch prediction or command)."""
    argv = None
    if command:
        try:
            argv = json.loads(command)
        except ValueError:
            argv = command.split()
    body = _job_body(
        kind,
        module,
        arg,
        input_,
        on,
        store,
        _resources(cpu, gpu, memory, time_limit, gpu_type),
        labels=label,
        output=output,
        command=argv,
        publish=publish,
        shared_workers=shared_workers,
        version=version,
        publish_version=publish_version,
        name=name,
    )
    c = Client(server, token)
    job = c.submit_job(body)
    out.print(f"job {job['id']} {_state(job['state'])} on {job['compute']}")
    if follow:
        raise typer.Exit(_follow(c, job["id"]))


@job_app.command("ls")
def ls(
    state: str = typer.Option(None, "--state", help="Only jobs in this state."),
    module: str = typer.Option(None, "--module"),
    compute: str = typer.Option(None, "--on", help="Only jobs on this compute connection."),
    limit: int = typer.Option(20, "--limit"),
    as_json: bool = JsonOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """List your jobs, newest first."""
    params = {"state": state, "module": module, "compute": compute, "limit": limit}
    page = Client(server, token).get(
        "/api/v1/jobs", params={k: v for k, v in params.items() if v is not None}
    )
    if as_json:
        out.print_json(json.dumps(page))
        return
    table = Table("id", "kind", "module", "state", "on", "created", "error")
    for j in page["jobs"]:
        table.add_row(
            j["id"][:12],
            j["kind"],
            j["module"] or "-",
            _state(j["state"]),
            j["compute"] or "-",
            j["created_at"][:19].replace("T", " "),
            (j["error"] or "")[:60],
        )
    out.print(table)
    out.print(f"{len(page['jobs'])} of {page['total']}")


def _find(c: Client, prefix: str) -> str:
    if len(prefix) >= 32:
        return prefix
    page = c.get("/api/v1/jobs", params={"limit": 500})
    return unique_id([j["id"] for j in page["jobs"]], prefix, "job")


@job_app.command("show")
def show(
    job_id: str, as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt
) -> None:
    """A job: its spec, state timeline, result and error."""
    c = Client(server, token)
    j = c.get(f"/api/v1/jobs/{_find(c, job_id)}")
    if as_json:
        out.print_json(json.dumps(j))
        return
    out.print(f"[bold]{j['id']}[/bold]  {j['kind']} {j['module'] or ''}  {_state(j['state'])}")
    out.print(f"on {j['compute']}, outputs to {j['storage']}, attempt {j['attempt'] + 1}")
    if j["reason"]:
        out.print(f"waiting: {j['reason']}")
    table = Table("at", "state", "attempt", "message")
    for e in j["events"]:
        table.add_row(
            e["at"][:23].replace("T", " "), e["state"], str(e["attempt"] + 1), e["message"] or ""
        )
    out.print(table)
    if j["result"]:
        out.print_json(json.dumps(j["result"]))
    if j["error"]:
        out.print(f"[red]error:[/red] {j['error']}")


def _follow(c: Client, job_id: str) -> int:
    """Print the log as it comes (Server-Sent Events); return 0 if the job succeeded."""
    httpx = httpx_module()
    state = "?"
    url = f"/api/v1/jobs/{job_id}/logs"
    cursor = 0
    while True:
        try:
            with c.http.stream(
                "GET", url, params={"follow": True, "after": cursor}, timeout=None
            ) as r:
                if r.status_code >= 400:
                    r.read()
                    exit_for(from_answer(r.status_code, r.text), c.server)
                event = ""
                for line in r.iter_lines():
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data = json.loads(line[6:])
                        if event == "lines":
                            cursor = data["next"]
                            for _t, stream, text, *_ in data["lines"]:
                                (err if stream == "stderr" else out).print(
                                    text, markup=False, highlight=False
                                )
                        elif event == "end":
                            state = data["state"]
            if state in FINISHED:
                break
        except httpx.TransportError:
            err.print("[yellow]connection lost; reconnecting…[/yellow]")
            time.sleep(1)
    err.print(f"job {job_id} {_state(state)}")
    if state != "succeeded":
        j = c.get(f"/api/v1/jobs/{job_id}")
        if j.get("error"):
            err.print(f"[red]error:[/red] {j['error']}", highlight=False)
    return 0 if state == "succeeded" else 1


@job_app.command("logs")
def logs(
    job_id: str, follow: bool = FollowOpt, server: str = ServerOpt, token: str = TokenOpt
) -> None:
    """Print a job's log; with -f, follow it live until the job ends."""
    c = Client(server, token)
    jid = _find(c, job_id)
    if follow:
        raise typer.Exit(_follow(c, jid))
    page = c.get(f"/api/v1/jobs/{jid}/logs")
    for _t, stream, text, *_ in page["lines"]:
        (err if stream == "stderr" else out).print(text, markup=False, highlight=False)


@job_app.command("cancel")
def cancel(job_id: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Cancel a job, whatever its state."""
    c = Client(server, token)
    r = c.post(f"/api/v1/jobs/{_find(c, job_id)}/cancel")
    out.print(f"job {r['id']}: {'cancelling' if r['cancel_requested'] else r['state']}")


@job_app.command("retry")
def retry(job_id: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Run a finished job again (as a new job)."""
    c = Client(server, token)
    j = c.post(f"/api/v1/jobs/{_find(c, job_id)}/retry")
    out.print(f"job {j['id']} {_state(j['state'])} (retry of {j['retry_of']})")


@job_app.command("run")
def run(
    job: str = typer.Option(..., "--job", help="Job id."),
    server: str = typer.Option(..., "--server", envvar="FORGEHUB_URL", help="Server URL."),
) -> None:
    """The job runner that every compute back end starts. It reads its job token from
    FORGEHUB_JOB_TOKEN (never from the command line, where other users could read it)."""
    from forgehub.jobs.runner import main

    if not os.environ.get("FORGEHUB_JOB_TOKEN"):
        fail("FORGEHUB_JOB_TOKEN is not set; the runner is started by forgehub, not by hand")
    raise typer.Exit(main(["--server", server, "--job", job]))


def train(
    module: str = typer.Argument(
        ...,
        help="Module to train: a name (digits) or its source (git+https://…@v1, "
        "pip:mymodule==1.2, wheel:ARTIFACT).",
    ),
    name: str = NameOpt,
    data: str = typer.Option(None, "--data", help="Dataset artifact (sha256:…, name[:tag])."),
    on: str = ComputeOpt,
    store: str = StorageOpt,
    arg: list[str] = ArgOpt,
    cpu: float = CpuOpt,
    gpu: int = GpuOpt,
    gpu_type: str = GpuTypeOpt,
    memory: int = MemOpt,
    time_limit: int = TimeOpt,
    publish: bool = typer.Option(False, "--publish", help="Publish the weights as a version."),
    publish_version: str = PublishVersionOpt,
    shared_workers: bool = SharedWorkersOpt,
    detach: bool = typer.Option(False, "--detach", "-d", help="Do not follow the logs."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Train a module on a dataset, on any compute, in one line; follows the log."""
    body = _job_body(
        "train",
        module,
        arg,
        [data] if data else [],
        on,
        store,
        _resources(cpu, gpu, memory, time_limit, gpu_type),
        publish=publish,
        shared_workers=shared_workers,
        publish_version=publish_version,
        name=name,
    )
    c = Client(server, token)
    job = c.submit_job(body)
    err.print(f"job {job['id']} {_state(job['state'])} on {job['compute']}")
    if detach:
        return
    code = _follow(c, job["id"])
    j = c.get(f"/api/v1/jobs/{job['id']}")
    res = j.get("result") or {}
    if res.get("output"):
        out.print(f"weights: {res['output']['name']} = {res['output']['digest']}")
    if res.get("published", {}).get("version"):
        out.print(f"published {res['published']['module']} {res['published']['version']}")
    raise typer.Exit(code)
