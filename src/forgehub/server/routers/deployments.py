"""/api/v1/deployments: deploy a module as a model API or a JupyterLab, list, show, save, stop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, Request
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.db.models import Deployment
from forgehub.deployments import service
from forgehub.server.deps import CurrentUser

router = APIRouter(prefix="/deployments", tags=["deployments"])
T = TypeVar("T")


async def _in_thread(fn: Callable[[], T]) -> T:
    return await anyio.to_thread.run_sync(fn)


def _out(s: Session, d: Deployment) -> dict[str, Any]:
    return service.describe(s, d)


def _one(request: Request, principal: Principal, dep_id: str, action: str, fn: Any) -> Any:
    def work() -> Any:
        with request.app.state.db.session() as s:
            d = service.get(s, principal, dep_id, action)
            service.sync(s, d)
            return fn(s, d)

    return _in_thread(work)


@router.post("", status_code=201, summary="Deploy a module (a model API or a JupyterLab)")
async def deploy(body: service.DeployIn, principal: CurrentUser, request: Request) -> Any:
    state = request.app.state
    settings = state.settings

    def work() -> dict[str, Any]:
        with state.db.session() as s:
            d = service.create(
                s,
                principal,
                body,
                state.secrets,
                settings.default_store,
                state.model_api.modules,
                state.policy,
                (settings.max_deployments, settings.max_deployment_gpus),
                tunnel=settings.cluster,
            )
            return _out(s, d)

    out = await _in_thread(work)
    state.dispatcher.notify()
    return out


@router.get("", summary="Your deployments, newest first")
async def list_deployments(principal: CurrentUser, request: Request) -> Any:
    def work() -> list[dict[str, Any]]:
        with request.app.state.db.session() as s:
            return [_out(s, service.sync(s, d)) for d in service.visible(s, principal)]

    return await _in_thread(work)


@router.get("/{dep_id}", summary="A deployment, with its events")
async def show(dep_id: str, principal: CurrentUser, request: Request) -> Any:
    return await _one(
        request,
        principal,
        dep_id,
        "deployment.read",
        lambda s, d: {**_out(s, d), "events": service.events(s, d)},
    )


@router.post("/{dep_id}/stop", summary="Stop a deployment (a JupyterLab's folder is saved first)")
async def stop(dep_id: str, principal: CurrentUser, request: Request) -> Any:
    from forgehub.deployments.proxy import forget

    out = await _one(
        request,
        principal,
        dep_id,
        "deployment.stop",
        lambda s, d: _out(s, service.stop(s, d)),
    )
    forget(request.app, dep_id)
    request.app.state.dispatcher.notify()
    return out


@router.get(
    "/{dep_id}/metrics",
    summary="An inference deployment's replicas, requests per second, latency, errors and "
    "cold starts, sampled each second (the last half hour; since: a time.time())",
)
async def metrics(dep_id: str, principal: CurrentUser, request: Request, since: float = 0.0) -> Any:
    from forgehub.deployments import scaling

    pools = request.app.state.dispatcher.pools
    await _one(request, principal, dep_id, "deployment.read", lambda s, d: None)
    return {"samples": scaling.metrics(pools.get(dep_id), since)}


class ShareIn(BaseModel):
    users: list[str] = Field(
        default_factory=list, max_length=100, description="User names; [] shares with nobody."
    )


@router.put(
    "/{dep_id}/share",
    summary="Share a deployment with exactly these users (they may open and see it)",
)
async def share(dep_id: str, body: ShareIn, principal: CurrentUser, request: Request) -> Any:
    from forgehub.deployments.proxy import forget

    def work(s: Session, d: Deployment) -> dict[str, Any]:
        service.share(s, d, body.users)
        return _out(s, d)

    out = await _one(request, principal, dep_id, "deployment.stop", work)
    forget(request.app, dep_id)  # whoever lost it loses it now, not in 2 s
    return out


class SaveIn(BaseModel):
    path: str = Field(default=".", max_length=255, description="A folder in its working folder.")
    name: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Artifact name [default: <title>-files].",
    )


@router.post("/{dep_id}/save", status_code=202, summary="Save its working folder as an artifact")
async def save(dep_id: str, body: SaveIn, principal: CurrentUser, request: Request) -> Any:
    return await _one(
        request,
        principal,
        dep_id,
        "deployment.stop",
        lambda s, d: service.request_save(d, body.path, body.name),
    )
