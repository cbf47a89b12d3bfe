"""What the job modules share: the compute connection family, job-wide constants, the
error type, and every user's built-in compute connections.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from forgehub.compute import ComputeError, adapter_class, kinds
from forgehub.connections import Family
from forgehub.db.models import (
    ComputeConnection,
    JobState,
)
from forgehub.errors import ForgehubError

COMPUTE: Family[ComputeConnection] = Family(
    "compute", ComputeConnection, adapter_class, ComputeError, kinds
)


JOB_TOKEN_PREFIX = "fhj_"


WORKER_ONLINE_S = 30.0


ACTIVE = (JobState.starting, JobState.running)


class JobError(ForgehubError):
    """A job request that cannot be done (the status says why)."""


def ensure_default_compute(session: Session, owner_id: str) -> ComputeConnection:
    """Every user has ``local`` (the server, the default) and ``workers`` (their workers)."""
    rows = {
        c.name: c
        for c in session.scalars(
            select(ComputeConnection).where(
                ComputeConnection.owner_id == owner_id,
                ComputeConnection.name.in_(["local", "workers"]),
            )
        )
    }
    try:
        for name, kind in (("local", "local"), ("workers", "worker")):
            if name not in rows:
                rows[name] = ComputeConnection(
                    owner_id=owner_id, name=name, kind=kind, config={}, is_default=name == "local"
                )
                session.add(rows[name])
        session.flush()
    except IntegrityError:
        session.rollback()  # two first requests at once: the other created them
        return ensure_default_compute(session, owner_id)
    return rows["local"]
