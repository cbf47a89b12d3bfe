"""/api/v1/storage/connections: bring your own storage. Secrets go in, never come out."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from forgehub.artifacts import connections as conns
from forgehub.db.models import StorageConnection
from forgehub.errors import Conflict
from forgehub.identity import authz
from forgehub.secrets import SecretBox
from forgehub.server.deps import CurrentUser, DbSession
from forgehub.storage import StorageError

router = APIRouter(prefix="/storage", tags=["storage"])


class ConnectionIn(BaseModel):
    name: str = Field(min_length=1, max_length=64)
    kind: str = Field(description="local, s3, webdav or blob (or a plugin's kind)")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The kind's settings, secrets included."
    )
    test: bool = Field(default=True, description="Test the connection before saving it.")


def box(request: Request) -> SecretBox:
    b: SecretBox = request.app.state.secrets
    return b


@router.get("/kinds", summary="Storage kinds and their configuration schemas")
def list_kinds(principal: CurrentUser) -> list[dict[str, Any]]:
    return [{"kind": k, "config_schema": schema} for k, schema in conns.STORAGE.schemas()]


@router.get("/connections", summary="Your storage connections")
def list_connections(
    principal: CurrentUser, session: DbSession, request: Request
) -> list[dict[str, Any]]:
    if principal.user_id:
        conns.ensure_default(
            session, box(request), principal.user_id, request.app.state.settings.default_store
        )
    return conns.STORAGE.listed(session, principal)


@router.post("/connections", status_code=201, summary="Add a connection (tested first)")
def add_connection(
    body: ConnectionIn, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    sealed_box = box(request)
    policy = request.app.state.policy

    def create() -> StorageConnection:
        config = policy.storage_config(principal, body.kind, body.config)
        return conns.create(
            session,
            sealed_box,
            principal.user_id,
            body.name,
            body.kind,
            config,
            test=body.test,
        )

    return conns.out(create())


@router.get("/connections/{name}", summary="One connection (secrets masked)")
def get_connection(name: str, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    return conns.out(conns.find(session, principal, name))


@router.post("/connections/{name}/test", summary="Test a saved connection")
def test_connection(
    name: str, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    conn = conns.find(session, principal, name)
    authz.require(principal, "connection.use", conn, f"storage connection {name!r}")
    adapter = conns.adapter_for(conn, box(request))
    session.commit()
    try:
        request.app.state.policy.check_hosts(principal, type(adapter), conn.config)
        adapter.test()
    except StorageError as exc:
        return {"name": name, "ok": False, "detail": str(exc)}
    return {"name": name, "ok": True, "detail": "reachable, credentials accepted"}


@router.delete("/connections/{name}", status_code=204, summary="Remove a connection")
def delete_connection(name: str, principal: CurrentUser, session: DbSession) -> Response:
    conn = conns.find(session, principal, name)
    authz.require(principal, "connection.delete", conn, f"storage connection {name!r}")
    if conn.is_default:
        raise Conflict("the default connection cannot be removed")
    session.delete(conn)
    return Response(status_code=204)
