"""The compute adapter contract.

A compute adapter runs ``forgehub job run`` somewhere. Every back end runs that same runner, which
fetches its job spec with a job token, so an adapter only has to start it, say how it is doing
and stop it::

    submit(launch) -> handle       start the runner for one attempt of a job
    status(handles) -> {handle: BackendStatus}
    cancel(handle)                  stop it (the whole process tree)
    capacity() -> Capacity          what it can run at once
    test()                          is it reachable with these settings?

``pull`` adapters (``worker``) start nothing: their jobs wait in the store until a worker claims
them. Errors raise :class:`ComputeError`, whose message is safe to show.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from forgehub.states import JobState


class ComputeError(Exception):
    """A compute back end failed; the message is safe to show (no secrets)."""


class ComputeConfig(BaseModel):
    """Base of compute configs: frozen, no unknown fields; secrets are ``SecretStr``."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Resources(BaseModel):
    """What a job asks for. Back ends map it onto their own flags."""

    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(default=1.0, gt=0, le=1024, allow_inf_nan=False, description="CPU cores.")
    gpu: int = Field(default=0, ge=0, le=64, description="GPUs.")
    gpu_model: str | None = Field(
        default=None,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="GPU model, where the back end knows models (Slurm GRES type, Ray's "
        "accelerator_type).",
    )
    memory_mb: int = Field(default=0, ge=0, le=1 << 40, description="Memory in MiB (0: no limit).")
    disk_mb: int = Field(
        default=0, ge=0, le=1 << 40, description="Local disk in MiB (Slurm --tmp; 0: any)."
    )
    time_limit_s: int = Field(
        default=3600, ge=1, le=30 * 86400, description="Wall-clock limit in seconds."
    )


@dataclass(frozen=True)
class Launch:
    """One attempt of a job, as a back end starts it."""

    job_id: str
    attempt: int
    server_url: str
    token: str  # the job token: scoped to this attempt, expiring; passed in the environment
    resources: Resources
    name: str = ""
    gpus: str | None = None  # CUDA_VISIBLE_DEVICES chosen by the platform (local compute)


@dataclass(frozen=True)
class BackendStatus:
    """A back end's view of a handle. ``state`` None means "still waiting to start"."""

    state: JobState | None
    reason: str = ""
    lost: bool = False  # the node failed or the job was pre-empted: run it again


@dataclass(frozen=True)
class Capacity:
    cpus: float
    gpus: int
    memory_mb: int
    slots: int | None = None  # jobs at once (None: the back end queues for itself)
    notes: list[str] = field(default_factory=list)


class ComputeAdapter(abc.ABC):
    kind: ClassVar[str]
    Config: ClassVar[type[ComputeConfig]]
    # -- capabilities: what the platform asks instead of testing kind strings ---------------
    pull: ClassVar[bool] = False  # jobs wait in the store and are claimed (workers)
    slots_on_server: ClassVar[bool] = False  # limited by the server's local_job_slots
    queues_itself: ClassVar[bool] = False  # a job may wait in the back end's own queue: no
    # lease before its runner starts (Slurm, Ray)

    # -- capabilities (asked by the platform instead of testing kind strings) ---------------
    @classmethod
    def runs_on_server(cls, config: dict[str, Any]) -> bool:
        """Does a connection with this (raw) config run code on the server machine?"""
        return False

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        """The hosts the server itself contacts for this (raw) config (egress policy)."""
        return []

    def __init__(self, config: ComputeConfig) -> None:
        self.config = config

    @abc.abstractmethod
    def test(self) -> None: ...

    @abc.abstractmethod
    def capacity(self) -> Capacity: ...

    def refuses(self, res: Resources) -> str | None:
        """Why this back end could never run a job that asks for ``res`` (asked at submit for
        GPU jobs, so that they are refused at once instead of waiting forever), or None."""
        return None

    def submit(self, launch: Launch) -> str:
        raise ComputeError(f"{self.kind} compute does not start jobs itself")

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        return {}

    def cancel(self, handle: str) -> None:
        return None
