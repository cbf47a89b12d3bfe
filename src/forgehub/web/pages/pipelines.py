"""Pipelines: the list (each pipeline, its last runs, a Run form), and a run's page, which
draws the graph (steps as boxes, artifacts on the edges) coloured live by state."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from forgehub.db.models import PipelineRun, StorageConnection
from forgehub.identity import authz
from forgehub.jobs import service as jobs
from forgehub.server.routers.pipelines import _pipeline_out, _run, describe_run
from forgehub.web.app import render, user

router = APIRouter()
BOX_W, BOX_H, GAP_X, GAP_Y, PAD, ARC = 190, 64, 90, 28, 16, 70


def graph(run: dict[str, Any]) -> dict[str, Any]:
    """Boxes in columns by depth (a step right of everything it waits for), edges between
    them labelled with the input they carry."""
    steps = {s["name"]: s for s in run["steps"]}
    depth: dict[str, int] = {}

    def d(name: str) -> int:
        if name not in depth:
            depth[name] = 1 + max((d(u) for u in steps[name]["needs"]), default=-1)
        return depth[name]

    columns: dict[int, list[str]] = {}
    for name in steps:  # already in run order
        columns.setdefault(d(name), []).append(name)
    pos = {}
    for col, names in columns.items():
        for row, name in enumerate(names):
            pos[name] = (PAD + col * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y))
    nodes = [{**steps[n], "x": x, "y": y} for n, (x, y) in pos.items()]
    edges: list[dict[str, Any]] = []
    for n, s in steps.items():
        labels: dict[str, list[str]] = {}
        for field, value in s["reads"].items():
            parts = value.split(".")
            if parts[0] == "steps" and len(parts) >= 2:
                labels.setdefault(parts[1], []).append(
                    field + (f" ← {parts[2]}" if len(parts) == 3 else "")
                )
        for up in s["needs"]:
            (ux, uy), (nx, ny) = pos[up], pos[n]
            x1, y1, x2, y2 = ux + BOX_W, uy + BOX_H / 2, nx, ny + BOX_H / 2
            # an edge that skips columns arcs over the boxes between
            lift = ARC if depth[n] - depth[up] > 1 else 0
            edges.append(
                {
                    "d": f"M {x1} {y1} C {x1 + 45} {y1 - lift}, {x2 - 45} {y2 - lift}, {x2} {y2}",
                    "lx": (x1 + x2) / 2,
                    "ly": (y1 + y2) / 2 - 6 - lift * 0.75,
                    "label": ", ".join(labels.get(up, ["after"])),
                }
            )
    rows = max((len(v) for v in columns.values()), default=1)
    top = ARC if any(depth[n] - depth[u] > 1 for n in steps for u in steps[n]["needs"]) else 0
    for node in nodes:
        node["y"] += top
    for e in edges:
        e["d"] = _shift(e["d"], top)
        e["ly"] += top
    return {
        "nodes": nodes,
        "edges": edges,
        "width": PAD * 2 + len(columns) * BOX_W + (len(columns) - 1) * GAP_X,
        "height": top + PAD * 2 + rows * BOX_H + (rows - 1) * GAP_Y,
        "box_w": BOX_W,
        "box_h": BOX_H,
    }


def _shift(path: str, dy: float) -> str:
    """An SVG path moved down by ``dy`` (its numbers alternate x, y after each command)."""
    out, coords = [], 0
    for word in path.replace(",", " ,").split():
        if word in ("M", "C", ","):
            out.append(word)
            continue
        out.append(f"{float(word) + dy:g}" if coords % 2 else word)
        coords += 1
    return " ".join(out).replace(" ,", ",")


@router.get("/pipelines", response_class=HTMLResponse)
def pipelines_page(request: Request) -> Response:
    from forgehub.db.models import Pipeline

    p = user(request)
    with request.app.state.db.session() as s:
        stmt = select(Pipeline).where(Pipeline.owner_id == p.user_id)
        pipelines = [_pipeline_out(s, x) for x in s.scalars(stmt.order_by(Pipeline.name))]
        runs_stmt = authz.visible(select(PipelineRun), PipelineRun, p, "run.read")
        recent = [
            describe_run(s, r)
            for r in s.scalars(runs_stmt.order_by(PipelineRun.created_at.desc()).limit(20))
        ]
        jobs.ensure_default_compute(s, p.user_id)
        computes = [c.name for c in jobs.COMPUTE.owned(s, p.user_id)]
        stores = [
            c.name
            for c in s.scalars(
                select(StorageConnection).where(StorageConnection.owner_id == p.user_id)
            )
        ]
    return render(
        request,
        "pipelines.html",
        principal=p,
        pipelines=pipelines,
        runs=recent,
        computes=computes,
        stores=stores,
    )


@router.get("/pipelines/runs/{run_id}", response_class=HTMLResponse)
def run_page(request: Request, run_id: str) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        run = describe_run(s, _run(s, p, run_id, "run.read"))
    return render(request, "pipeline_run.html", principal=p, run=run, g=graph(run))


def _what(step: Any) -> str:
    return str(step.module or step.function or " ".join(step.command or []))


@router.get("/pipelines/p/{pipeline_id}", response_class=HTMLResponse)
def pipeline_page(request: Request, pipeline_id: str) -> Response:
    """A pipeline's page (a published one is open to anyone): what it does, its graph, its
    definition, and a Run form for a signed-in user (the run is theirs, on their compute)."""
    from forgehub.pipelines.definition import Definition, order, upstream
    from forgehub.server.routers.pipelines import _pipeline
    from forgehub.web.app import visitor

    p = visitor(request)
    with request.app.state.db.session() as s:
        x = _pipeline_out(s, _pipeline(s, p, pipeline_id))
        computes, stores = [], []
        if p is not None:
            jobs.ensure_default_compute(s, p.user_id)
            computes = [c.name for c in jobs.COMPUTE.owned(s, p.user_id)]
            stores = [
                c.name
                for c in s.scalars(
                    select(StorageConnection).where(StorageConnection.owner_id == p.user_id)
                )
            ]
    d = Definition.model_validate(x["definition"])
    sketch = {  # the graph of a run that has not started
        "steps": [
            {
                "name": n,
                "kind": d.steps[n].kind,
                "what": d.steps[n].module
                or d.steps[n].function
                or " ".join(d.steps[n].command or []),
                "state": "waiting",
                "job": None,
                "needs": sorted(upstream(d.steps[n])),
                "reads": dict(d.steps[n].inputs),
            }
            for n in order(d)
        ]
    }
    import yaml

    text = yaml.safe_dump(x["definition"], sort_keys=False, allow_unicode=True)
    return render(
        request,
        "pipeline.html",
        principal=p,
        x=x,
        g=graph(sketch),
        text=text,
        computes=computes,
        stores=stores,
    )
