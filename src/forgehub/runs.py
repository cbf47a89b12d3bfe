"""The one guarded state change of everything that runs (jobs, trainings; next deployments,
replicas and pipeline runs).

:func:`transition` moves a row to a new state if its machine allows it and the row is still in
the state the caller read (a compare-and-set, with extra columns such as the attempt), writes
the start and end times, and lets the caller add its event in the same transaction. Two
processes can never both move the same run.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from forgehub.db.models import utcnow
from forgehub.states import Machine, RunState


class TransitionError(Exception):
    """A move the machine does not allow (a bug in the caller, not bad input)."""


def transition(
    session: Session,
    run: Any,
    new: RunState,
    machine: Machine,
    *,
    match: dict[str, Any] | None = None,
    on_change: Callable[[datetime], None] | None = None,
    **fields: Any,
) -> bool:
    """Move ``run`` (an ORM row with ``id``, ``state``, ``started_at``, ``finished_at``) to
    ``new``; False if it is no longer in the state read (someone was first) or already there.

    ``match``: more columns the row must still have (a job's attempt). ``fields``: columns
    written with the change. ``on_change(now)`` runs once the change is made, in the same
    transaction (a job writes its event there)."""
    model = type(run)
    state_type = type(new)
    old = state_type(run.state)
    if not machine.allows(old.value, new.value):
        if old == new or old.finished:
            return False
        raise TransitionError(f"a {machine.name} cannot go from {old} to {new}")
    now = utcnow()
    values: dict[str, Any] = {"state": new, **fields}
    if new.value == "running" and run.started_at is None:
        values.setdefault("started_at", now)
    if new.finished:
        values.setdefault("finished_at", now)
    where = [model.id == run.id, model.state == old]
    where += [getattr(model, k) == v for k, v in (match or {}).items()]
    res = session.execute(
        update(model).where(*where).values(**values).execution_options(synchronize_session=False)
    )
    if getattr(res, "rowcount", 0) != 1:
        session.expire(run)
        return False
    for k, v in values.items():  # the loaded object shows what the UPDATE wrote
        set_committed_value(run, k, v)
    if on_change is not None:
        on_change(now)
    return True
