"""``forgehub deploy`` and ``forgehub deployment``: modules served as a model API or a
JupyterLab, reached through the platform."""

from __future__ import annotations

import json
import time
import webbrowser
from typing import Any

import typer

from forgehub.cli.client import Client, ServerOpt, TokenOpt, fail, unique_id
from forgehub.cli.messages import Console, Table
from forgehub.humanize import duration

app = typer.Typer(
    rich_markup_mode=None,
    help="Your deployments: list, show, logs, save, open, stop.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
ENDED = {"stopped", "failed"}


def _find(c: Client, prefix: str) -> str:
    if len(prefix) >= 32:
        return prefix
    return unique_id([d["id"] for d in c.get("/api/v1/deployments")], prefix, "deployment")


def deploy(
    module: str = typer.Argument(
        ...,
        help="MODULE[:VERSION]: a catalogue or installed module, or its source (git+URL@ref, "
        "pip:REQUIREMENT, wheel:ARTIFACT); the version defaults to the newest trained one.",
    ),
    service: str = typer.Option("api", "--service", help="api (the model API) or jupyterlab."),
    on: str = typer.Option("local", "--on", help="Compute connection."),
    cpu: float = typer.Option(1.0, "--cpu", help="CPU cores."),
    gpu: int = typer.Option(0, "--gpu", help="GPUs."),
    gpu_model: str = typer.Option(None, "--gpu-model", help="GPU model, where the back end knows."),
    memory: int = typer.Option(0, "--memory", help="Memory in MiB (0: any)."),
    disk: int = typer.Option(0, "--disk", help="Disk in MiB (0: any)."),
    title: str = typer.Option(None, "--title", help="A title [default: module (service)]."),
    ttl: int = typer.Option(None, "--ttl", help="Stop after this many seconds."),
    idle_stop: int = typer.Option(
        None, "--idle-stop", help="Stop once it has had no request for this many seconds."
    ),
    input_: list[str] = typer.Option(
        [], "--input", "-i", help="NAME=ARTIFACT copied into its working folder (repeat)."
    ),
    restart: bool = typer.Option(False, "--restart", help="Start again when its host is lost."),
    min_replicas: int = typer.Option(
        None,
        "--min-replicas",
        help="An inference deployment (api): replicas kept up, 0 to scale to zero.",
    ),
    max_replicas: int = typer.Option(
        None, "--max-replicas", help="An inference deployment: replicas at most."
    ),
    target: float = typer.Option(
        None, "--target-in-flight", help="Requests in flight per replica to aim at [4]."
    ),
    scale_down_after: int = typer.Option(
        None, "--scale-down-after", help="Seconds of lower load before a replica goes [60]."
    ),
    share: list[str] = typer.Option([], "--share", help="A user who may open it too (repeat)."),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        help="A module with predict_batch: requests per batch [its own]; 0: no batching.",
    ),
    batch_wait_ms: float = typer.Option(
        None, "--batch-wait-ms", help="How long a batch's first request waits for more."
    ),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="Wait until it answers."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Deploy a module as a model API or a JupyterLab; prints its URL on the platform."""
    from forgehub.envs.sources import SourceError, parse

    version = None
    try:
        is_source = parse(module) is not None
    except SourceError as exc:
        fail(str(exc))
    if not is_source and ":" in module:
        module, version = module.split(":", 1)
    inputs = {}
    for pair in input_:
        name, sep, ref = pair.partition("=")
        if not sep:
            fail(f"--input {pair!r}: NAME=ARTIFACT")
        inputs[name] = ref
    body: dict[str, Any] = {
        "module": module,
        "version": version,
        "service": service,
        "compute": on,
        "title": title,
        "ttl_s": ttl,
        "idle_stop_s": idle_stop,
        "inputs": inputs,
        "restart": restart,
        "share": share,
        "batch_size": batch_size,
        "batch_wait_ms": batch_wait_ms,
        "resources": {
            "cpu": cpu,
            "gpu": gpu,
            "gpu_model": gpu_model,
            "memory_mb": memory,
            "disk_mb": disk,
        },
    }
    scaling = {
        "min": min_replicas,
        "max": max_replicas,
        "target": target,
        "idle_s": scale_down_after,
    }
    if any(v is not None for v in scaling.values()):
        lo = min_replicas if min_replicas is not None else 1
        scaling["min"], scaling["max"] = (
            lo,
            max_replicas if max_replicas is not None else max(lo, 1),
        )
        body["replicas"] = {k: v for k, v in scaling.items() if v is not None}
    c = Client(server, token)
    d = c.post("/api/v1/deployments", json=body)
    err.print(f"deployment {d['id']} {d['state']} on {d['compute']}")
    if wait:
        with err.status("starting…") as status:
            while d["state"] not in ENDED | {"running"}:
                time.sleep(0.5)
                d = c.get(f"/api/v1/deployments/{d['id']}")
                status.update(f"{d['state']}: {d['reason'] or ''}")
        if d["state"] != "running":
            fail(f"deployment {d['id']} {d['state']}: {d['reason']}")
    out.print(f"{c.server.rstrip('/')}{d['url']}")


@app.command("share")
def share_cmd(
    dep_id: str,
    users: list[str] = typer.Argument(None, help="User names; none: share with nobody."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Share a deployment with exactly these users: they may open it and see it, not stop it."""
    c = Client(server, token)
    path = f"/api/v1/deployments/{_find(c, dep_id)}/share"
    d = c.request("PUT", path, json={"users": users or []})
    out.print(f"{d['title']}: shared with {', '.join(d['shared_with']) or 'nobody'}")


@app.command("ls")
def ls(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Your deployments: state, service, resources, compute, age."""
    rows = Client(server, token).get("/api/v1/deployments")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("id", "title", "service", "state", "on", "resources", "replicas", "age")
    for d in rows:
        res = d["resources"]
        reps = d.get("replicas")
        table.add_row(
            d["id"][:12],
            d["title"],
            d["service"],
            d["state"],
            d["compute"] or "-",
            f"{res.get('cpu', 1):g} CPU" + (f", {res['gpu']} GPU" if res.get("gpu") else ""),
            f"{reps['ready']} ({reps['min']}–{reps['max']})" if reps else "-",
            duration(d["age_s"]),
        )
    out.print(table)


@app.command("show")
def show(
    dep_id: str,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """A deployment: its state, URL, events and saved folders."""
    c = Client(server, token)
    d = c.get(f"/api/v1/deployments/{_find(c, dep_id)}")
    if as_json:
        out.print_json(json.dumps(d))
        return
    out.print(f"[bold]{d['title']}[/bold]  {d['service']} of {d['module']}  {d['state']}")
    if d.get("replicas"):
        r = d["replicas"]
        out.print(
            f"{c.server.rstrip('/')}{d['url']}  on {d['compute']}, replicas {r['ready']} ready, "
            f"{r['starting']} starting ({r['min']}–{r['max']}, {r['target']:g} in flight each)"
        )
    else:
        out.print(f"{c.server.rstrip('/')}{d['url']}  on {d['compute']}, job {d['job']}")
    if d["reason"]:
        out.print(d["reason"], highlight=False)
    table = Table("at", "state", "message")
    for e in d["events"]:
        table.add_row(e["at"][:19].replace("T", " "), e["state"], e["message"] or "")
    out.print(table)
    for s in d["saved"]:
        out.print(f"saved {s.get('name', '-')}: {s.get('digest') or s.get('error')}")


@app.command("logs")
def logs(
    dep_id: str,
    follow: bool = typer.Option(False, "--follow", "-f", help="Follow the log live."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """The service's log (its job's)."""
    from forgehub.cli.jobs import logs as job_logs

    c = Client(server, token)
    d = c.get(f"/api/v1/deployments/{_find(c, dep_id)}")
    job_logs(d["job"], follow=follow, server=server, token=token)


@app.command("stop")
def stop(dep_id: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Stop a deployment (a JupyterLab's folder is saved first) and wait until it has."""
    c = Client(server, token)
    dep = _find(c, dep_id)
    d = c.post(f"/api/v1/deployments/{dep}/stop")
    while d["state"] not in ENDED:
        time.sleep(0.5)
        d = c.get(f"/api/v1/deployments/{dep}")
    out.print(f"deployment {dep} {d['state']}")
    for s in d["saved"][-1:]:
        if s.get("digest"):
            out.print(f"its folder: {s['name']} = {s['digest']}")


@app.command("save")
def save(
    dep_id: str,
    path: str = typer.Option(".", "--path", help="A folder in its working folder."),
    name: str = typer.Option(None, "--name", help="Artifact name [default: <title>-files]."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Save a deployment's working folder (or a folder in it) as an artifact."""
    c = Client(server, token)
    dep = _find(c, dep_id)
    before = len(c.get(f"/api/v1/deployments/{dep}")["saved"])
    req = c.post(f"/api/v1/deployments/{dep}/save", json={"path": path, "name": name})
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        saved = c.get(f"/api/v1/deployments/{dep}")["saved"]
        if len(saved) > before:
            s = saved[-1]
            if s.get("error"):
                fail(s["error"])
            out.print(f"{s['name']} = {s['digest']}")
            return
        time.sleep(0.5)
    fail(f"the deployment did not save {req['path']} within 10 minutes")


@app.command("open")
def open_(dep_id: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Open a deployment in the browser (JupyterLab: its lab)."""
    c = Client(server, token)
    d = c.get(f"/api/v1/deployments/{_find(c, dep_id)}")
    url = f"{c.server.rstrip('/')}{d['url']}" + ("lab" if d["service"] == "jupyterlab" else "")
    out.print(url)
    webbrowser.open(url)
