"""Workers as people see them: online or not, what they run; the listing's visibility rule."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.db.models import Job, Worker, utcnow
from forgehub.identity import authz
from forgehub.jobs.common import ACTIVE, WORKER_ONLINE_S


def worker_out(w: Worker, running: int) -> dict[str, Any]:
    online = w.stopped_at is None and utcnow() - w.last_seen_at < timedelta(seconds=WORKER_ONLINE_S)
    return {
        "id": w.id,
        "name": w.name,
        "labels": w.labels,
        "cpus": w.cpus,
        "gpus": w.gpus,
        "gpu_models": w.gpu_models,
        "gpu_memory_mb": w.gpu_memory_mb,
        "memory_mb": w.memory_mb,
        "shared": w.shared,
        "version": w.version,
        "online": online,
        "last_seen_at": w.last_seen_at.isoformat(),
        "running_jobs": running,
    }


def listing(session: Session, principal: Principal, all_: bool = False) -> list[dict[str, Any]]:
    """Workers seen in the last day: the caller's and shared ones; with ``all_``, every worker
    the caller may see (an admin: all)."""
    since = utcnow() - timedelta(hours=24)
    stmt = select(Worker).where(Worker.last_seen_at >= since).order_by(Worker.name)
    if all_:
        stmt = authz.visible(stmt, Worker, principal, "worker.read")
    else:
        stmt = stmt.where((Worker.owner_id == principal.user_id) | Worker.shared.is_(True))
    rows = list(session.scalars(stmt))
    counts = dict(
        session.execute(
            select(Job.worker_id, func.count())
            .where(Job.worker_id.in_([w.id for w in rows]), Job.state.in_(ACTIVE))
            .group_by(Job.worker_id)
        ).all()
    )
    return [worker_out(w, counts.get(w.id, 0)) for w in rows]
