"""Storage: connections (with a test button) and the artifact browser (upload, download)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from forgehub.artifacts.connections import STORAGE, ensure_default
from forgehub.db.models import Artifact, ArtifactTag, StorageConnection
from forgehub.web.app import render, user

router = APIRouter()


def _kinds() -> list[dict[str, Any]]:
    from forgehub.storage import StorageError, adapter_class, kinds
    from forgehub.web.pages.market import schema_fields

    out = []
    for kind in sorted(kinds()):
        try:
            cls = adapter_class(kind)
        except StorageError:
            continue
        out.append({"kind": kind, "fields": schema_fields(cls.Config.model_json_schema())})
    return out


PER_PAGE = 50


@router.get("/storage", response_class=HTMLResponse)
def storage_page(request: Request, page: int = Query(1, ge=1, le=100_000)) -> Response:
    p = user(request)
    state = request.app.state
    with state.db.session() as s:
        ensure_default(s, state.secrets, p.user_id, state.settings.data_dir)
        conns = [
            STORAGE.out(c)
            for c in s.scalars(
                select(StorageConnection)
                .where(StorageConnection.owner_id == p.user_id)
                .order_by(StorageConnection.name)
            )
        ]
        total = (
            s.scalar(
                select(func.count()).select_from(Artifact).where(Artifact.owner_id == p.user_id)
            )
            or 0
        )
        arts = list(
            s.scalars(
                select(Artifact)
                .where(Artifact.owner_id == p.user_id)
                .order_by(Artifact.created_at.desc())
                .limit(PER_PAGE)
                .offset((page - 1) * PER_PAGE)
            )
        )
        tags: dict[str, list[str]] = {}
        for t in s.scalars(
            select(ArtifactTag).where(ArtifactTag.artifact_id.in_([a.id for a in arts]))
        ):
            tags.setdefault(t.artifact_id, []).append(f"{t.name}:{t.tag}")
    return render(
        request,
        "storage.html",
        kinds=_kinds(),
        principal=p,
        connections=conns,
        artifacts=arts,
        tags=tags,
        total=total,
        page=page,
        pages=max(1, -(-total // PER_PAGE)),
    )
