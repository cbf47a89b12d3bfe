"""The states of everything that runs, and the one guarded transition they all go through.

Dependency-free (no ORM): adapters and clients import the enums from here. A *machine* is the
table of allowed moves; :func:`forgehub.runs.transition` applies one as a compare-and-set in
the caller's transaction. Jobs, model-API trainings — and next deployments, replicas and
pipeline runs — each declare their machine here.

::

    job:       queued ──► starting ──► running ──► succeeded | failed | cancelled
                  ▲           │            │
                  └───────────┴────────────┘   lost: again, until the retry limit
    training:  queued ──► running ──► succeeded | failed | cancelled
    deployment: pending ──► starting ──► running ──► stopping ──► stopped | failed
                   ▲            │           │   (its host lost, restart asked: pending again)
                   └────────────┴───────────┘
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

ENDS = ("succeeded", "failed", "cancelled")


class RunState(enum.StrEnum):
    """Base of the states of things that run: the three ends are shared."""

    @property
    def finished(self) -> bool:
        return self.value in ENDS


class JobState(RunState):
    queued = "queued"
    starting = "starting"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class TrainingState(RunState):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class DeploymentState(RunState):
    pending = "pending"
    starting = "starting"
    running = "running"
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"

    @property
    def finished(self) -> bool:
        return self.value in ("stopped", "failed")


@dataclass(frozen=True)
class Machine:
    """The allowed moves of one kind of run. A finished run never moves again."""

    name: str
    allowed: dict[str, frozenset[str]]

    def allows(self, old: str, new: str) -> bool:
        return new in self.allowed.get(old, frozenset())


def _ends(*more: str) -> frozenset[str]:
    return frozenset((*ENDS, *more))


JOBS = Machine(
    "job",
    {
        "queued": frozenset({"starting", "failed", "cancelled"}),
        "starting": _ends("queued", "running"),
        "running": _ends("queued"),
    },
)
DEPLOYMENTS = Machine(
    "deployment",
    {
        "pending": frozenset({"starting", "running", "stopping", "stopped", "failed"}),
        "starting": frozenset({"pending", "running", "stopping", "stopped", "failed"}),
        "running": frozenset({"pending", "starting", "stopping", "stopped", "failed"}),
        "stopping": frozenset({"stopped", "failed"}),
    },
)
TRAININGS = Machine(
    "training",
    {
        "queued": frozenset({"running", "failed", "cancelled"}),
        "running": _ends(),
    },
)


@dataclass(frozen=True)
class Retry:
    """How often a lost run starts again before it fails (rq's ``Retry(max, interval)``)."""

    max: int = 2
    interval_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.max <= 20 or self.interval_s < 0:
            raise ValueError("Retry: 0 <= max <= 20 and interval_s >= 0")

    def allows(self, attempt: int) -> bool:
        """May attempt ``attempt`` (0-based) be followed by another?"""
        return attempt < self.max
