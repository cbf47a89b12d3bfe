"""Deployments: the list (state, resources, host, age, Open), a deployment's page (events, live
log, saved folders, Save and Stop), and the Deploy form of a module."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from forgehub.db.models import Artifact
from forgehub.deployments import service
from forgehub.identity import authz
from forgehub.jobs import service as jobs
from forgehub.web.app import render, user

router = APIRouter()


@router.get("/deployments", response_class=HTMLResponse)
def deployments_page(request: Request) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        rows = []
        for d in service.visible(s, p):
            service.sync(s, d)
            rows.append(service.describe(s, d))
    return render(request, "deployments.html", principal=p, deployments=rows)


@router.get("/deployments/{dep_id}", response_class=HTMLResponse)
def deployment_page(request: Request, dep_id: str) -> Response:
    p = user(request)
    with request.app.state.db.session() as s:
        d = service.get(s, p, dep_id, "deployment.read")
        service.sync(s, d)
        view = {**service.describe(s, d), "events": service.events(s, d)}
    return render(request, "deployment.html", principal=p, d=view)


@router.get("/modules/{name}/deploy", response_class=HTMLResponse)
def deploy_page(request: Request, name: str) -> Response:
    from forgehub.catalog.service import CatalogError, get_module
    from forgehub.catalog.weights import is_trained, runnable

    p = user(request)
    with request.app.state.db.session() as s:
        try:
            m = get_module(s, name)
        except CatalogError as exc:
            return render(request, "error.html", 404, principal=p, message=str(exc))
        versions = [
            v.version
            for v in sorted(m.versions, key=lambda v: v.created_at, reverse=True)
            if not v.deprecated and (is_trained(v) or runnable(v.source))
        ]
        jobs.ensure_default_compute(s, p.user_id)
        computes = sorted(jobs.COMPUTE.owned(s, p.user_id), key=lambda c: not c.is_default)
        artifacts = list(
            s.scalars(
                authz.visible(select(Artifact), Artifact, p, "artifact.read")
                .order_by(Artifact.created_at.desc())
                .limit(200)
            )
        )
    return render(
        request,
        "deploy.html",
        principal=p,
        name=name,
        versions=versions,
        computes=computes,
        artifacts=artifacts,
    )
