"""Storage: connections (with a test button) and the artifact browser (upload, download)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import func, select

from forgehub.artifacts import records
from forgehub.artifacts.connections import STORAGE, ensure_default
from forgehub.db.models import Artifact
from forgehub.identity import authz
from forgehub.web.app import render, user
from forgehub.web.pages.market import kind_forms

router = APIRouter()


PER_PAGE = 50


@router.get("/storage", response_class=HTMLResponse)
def storage_page(request: Request, page: int = Query(1, ge=1, le=100_000)) -> Response:
    p = user(request)
    state = request.app.state
    with state.db.session() as s:
        ensure_default(s, state.secrets, p.user_id, state.settings.default_store)
        conns = [STORAGE.out(c) for c in STORAGE.owned(s, p.user_id)]
        mine = authz.visible(select(Artifact), Artifact, p, "artifact.read")
        total = s.scalar(select(func.count()).select_from(mine.subquery())) or 0
        arts = records.describe(
            s,
            list(
                s.scalars(
                    mine.order_by(Artifact.created_at.desc())
                    .limit(PER_PAGE)
                    .offset((page - 1) * PER_PAGE)
                )
            ),
        )
        made_by = _made_by(s, [a["producer_job_id"] for a in arts if a.get("producer_job_id")])
    return render(
        request,
        "storage.html",
        made_by=made_by,
        kinds=kind_forms(STORAGE),
        principal=p,
        connections=conns,
        artifacts=arts,
        total=total,
        page=page,
        pages=max(1, -(-total // PER_PAGE)),
    )


def _made_by(session: Any, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """Job id → the pipeline run and step it was, for the artifacts jobs made."""
    from forgehub.db.models import PipelineStep

    if not job_ids:
        return {}
    rows = session.scalars(select(PipelineStep).where(PipelineStep.job_id.in_(job_ids)))
    return {r.job_id: {"run": r.run_id, "step": r.name} for r in rows}
