"""Tables of the metadata store. Every change here comes with an Alembic migration."""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from forgehub.states import DeploymentState, JobState, RunState, TrainingState

__all__ = ["JobState", "RunState", "TrainingState"]  # re-exported: they live in forgehub.states


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every back end (SQLite stores naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: UTCDateTime()}


class Role(enum.StrEnum):
    admin = "admin"
    user = "user"


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(Enum(Role, native_enum=False, length=16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # False while a user who signed in with a provider that requires approval waits for it
    active: Mapped[bool] = mapped_column(default=True)

    tokens: Mapped[list[Token]] = relationship(back_populates="user", cascade="all, delete")


class Token(Base):
    """An API token. Only the SHA-256 of the secret is stored."""

    __tablename__ = "tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    # a dashboard session: the token it was signed in with (revoking that one ends it too)
    parent_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class Identity(Base):
    """How a user signs in with an OpenID provider. Users are matched by issuer and subject,
    never by e-mail (an address can change hands; two providers may both vouch for one)."""

    __tablename__ = "identities"
    __table_args__ = (UniqueConstraint("issuer", "subject"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    issuer: Mapped[str] = mapped_column(String(512))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str] = mapped_column(String(320), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class Group(Base):
    """A group of users: from a provider's groups claim, or made in forgehub."""

    __tablename__ = "groups"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class GroupMember(Base):
    """Membership; ``source`` says who manages it: ``local`` (forgehub) or ``oidc:<provider>``
    (replaced by the provider's claim at each sign-in and token)."""

    __tablename__ = "group_members"

    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    source: Mapped[str] = mapped_column(String(64), default="local")


class GroupShare(Base):
    """A resource its owner shared with a group, at a role: ``read`` (see it, download it),
    ``use`` (also run jobs with it) or ``admin`` (also change and share it). ``kind`` is the
    authorizer's resource kind (artifact, connection, module, deployment, pipeline)."""

    __tablename__ = "group_shares"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    resource_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    group_id: Mapped[str] = mapped_column(
        ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    role: Mapped[str] = mapped_column(String(8))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Quota(Base):
    """Limits an admin set on a user or a group (see :mod:`forgehub.identity.quotas`):
    ``{"running_jobs": 4, "gpus": 2, "deployments": 1, "stored_bytes": 10**10}``; a missing
    key is no limit."""

    __tablename__ = "quotas"

    subject_kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # user | group
    subject_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    limits: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Training(Base):
    """A training run started through the model API (DEEPaaS ``/train/``)."""

    __tablename__ = "trainings"
    __table_args__ = (Index("ix_trainings_owner_module", "owner_id", "module"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    module: Mapped[str] = mapped_column(String(128))
    state: Mapped[TrainingState] = mapped_column(
        Enum(TrainingState, native_enum=False, length=16), default=TrainingState.queued
    )
    args: Mapped[dict[str, Any]] = mapped_column(default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    # one of several servers: the one training it renews this; lapsed, it is marked failed
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)


class CatalogModule(Base):
    """A marketplace entry. ``meta`` is the AI4OS v2 metadata document."""

    __tablename__ = "catalog_modules"
    __table_args__ = (
        Index("ix_catalog_modules_live", "deprecated", "updated_at", "name"),
        Index("ix_catalog_modules_use", text("use_count DESC"), "name"),  # "most used" pages
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    owner_id: Mapped[str | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), default=None, index=True
    )
    title: Mapped[str] = mapped_column(String(200))
    summary: Mapped[str] = mapped_column(String(400))
    description: Mapped[str] = mapped_column(Text, default="")
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    source: Mapped[str] = mapped_column(String(16), default="added")  # installed | added
    deprecated: Mapped[bool] = mapped_column(default=False)
    deprecation_note: Mapped[str | None] = mapped_column(Text, default=None)
    use_count: Mapped[int] = mapped_column(default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    # SQLite: the rowid of its row in the full-text index (catalog_fts), found without a scan
    fts_rowid: Mapped[int | None] = mapped_column(default=None)

    versions: Mapped[list[CatalogVersion]] = relationship(
        back_populates="module", cascade="all, delete-orphan", order_by="CatalogVersion.created_at"
    )


class CatalogVersion(Base):
    __tablename__ = "catalog_versions"
    __table_args__ = (UniqueConstraint("module_id", "version"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    module_id: Mapped[str] = mapped_column(ForeignKey("catalog_modules.id", ondelete="CASCADE"))
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(String(500), default="")
    changelog: Mapped[str] = mapped_column(Text, default="")
    predict_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    train_schema: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    weights_digest: Mapped[str | None] = mapped_column(String(80), default=None)
    # a trained version: the job, module source, args, inputs and final metrics that made it
    provenance: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    deprecated: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    module: Mapped[CatalogModule] = relationship(back_populates="versions")


class CatalogFacet(Base):
    """One facet value of a module (category, task, library, data_type, tag), for counting."""

    __tablename__ = "catalog_facets"
    __table_args__ = (Index("ix_catalog_facets_facet_value", "facet", "value", "module_id"),)

    module_id: Mapped[str] = mapped_column(
        ForeignKey("catalog_modules.id", ondelete="CASCADE"), primary_key=True
    )
    facet: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(128), primary_key=True)


class BlobOwner(Base):
    """Who uploaded a blob of the platform's blob server (and so may read it)."""

    __tablename__ = "blob_owners"

    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ConnectionColumns:
    """What every connection has: a name unique per owner, a kind, its plain configuration and
    its sealed secrets (see :mod:`forgehub.connections`)."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:  # a constraint of each table's own
        return (UniqueConstraint("owner_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)
    secrets: Mapped[str | None] = mapped_column(Text, default=None)
    is_default: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class StorageConnection(ConnectionColumns, Base):
    """A user's configured storage (bring your own storage). Secrets are encrypted."""

    __tablename__ = "storage_connections"


class Artifact(Base):
    """Immutable content, identified by ``sha256:<hex>``; one record per owner and digest."""

    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("owner_id", "digest"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    digest: Mapped[str] = mapped_column(String(80), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # file | dir
    size: Mapped[int] = mapped_column(BigInteger)
    media_type: Mapped[str] = mapped_column(String(128), default="application/octet-stream")
    filename: Mapped[str] = mapped_column(String(255), default="")
    producer_job_id: Mapped[str | None] = mapped_column(String(32), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    locations: Mapped[list[ArtifactLocation]] = relationship(cascade="all, delete-orphan")


class ArtifactLocation(Base):
    __tablename__ = "artifact_locations"

    artifact_id: Mapped[str] = mapped_column(
        ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True
    )
    connection_id: Mapped[str] = mapped_column(
        ForeignKey("storage_connections.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PackedFile(Base):
    """A file a connection's store holds inside a pack (see :mod:`forgehub.artifacts.packs`):
    what lets a later push point at it instead of storing it again. Per connection, so what one
    user's pushes claim never decides what another's skip."""

    __tablename__ = "packed_files"

    connection_id: Mapped[str] = mapped_column(
        ForeignKey("storage_connections.id", ondelete="CASCADE"), primary_key=True
    )
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)
    pack: Mapped[str] = mapped_column(String(80), index=True)
    offset: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)


class ArtifactTag(Base):
    """``owner/name:tag`` → artifact."""

    __tablename__ = "artifact_tags"

    owner_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ComputeConnection(ConnectionColumns, Base):
    """A user's configured compute (the server, their workers, a Slurm or Ray cluster)."""

    __tablename__ = "compute_connections"


class Job(Base):
    """A unit of work (a training, a batch prediction, a command) on some compute."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_owner_created", "owner_id", "created_at"),
        Index("ix_jobs_state_compute", "state", "compute_id"),
        # a submit retried (through a load balancer, after a lost answer) finds its first job
        Index("ux_jobs_owner_idempotency", "owner_id", "idempotency_key", unique=True),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # train | predict | command
    module: Mapped[str | None] = mapped_column(String(128), default=None, index=True)
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    # the whole spec: args, command, inputs, outputs, resources, labels, publish
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)
    compute_id: Mapped[str] = mapped_column(
        ForeignKey("compute_connections.id", ondelete="CASCADE")
    )
    storage_id: Mapped[str] = mapped_column(
        ForeignKey("storage_connections.id", ondelete="CASCADE")
    )
    state: Mapped[JobState] = mapped_column(
        Enum(JobState, native_enum=False, length=16), default=JobState.queued
    )
    attempt: Mapped[int] = mapped_column(default=0)
    max_retries: Mapped[int] = mapped_column(default=2)
    retry_of: Mapped[str | None] = mapped_column(String(32), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(64), default=None)
    # a deployment's runner tunnel: the server (host:port of its peer listener) that holds it
    tunnel_peer: Mapped[str | None] = mapped_column(String(255), default=None)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)  # why it waits, in words
    backend_ref: Mapped[str | None] = mapped_column(String(128), default=None)
    worker_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    token_digest: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    token_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    """One state change of a job, with its time: the job's timeline."""

    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    attempt: Mapped[int] = mapped_column(default=0)
    message: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class JobLog(Base):
    """A batch of log lines of one attempt; ``seq`` makes a re-sent batch count once."""

    __tablename__ = "job_logs"
    __table_args__ = (UniqueConstraint("job_id", "attempt", "seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(default=0)
    seq: Mapped[int] = mapped_column(default=0)
    lines: Mapped[list[Any]] = mapped_column(JSON, default=list)  # [[t, stream, text], …]
    at: Mapped[datetime] = mapped_column(default=utcnow)


class JobMetric(Base):
    __tablename__ = "job_metrics"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    step: Mapped[int | None] = mapped_column(default=None)
    value: Mapped[float] = mapped_column()
    at: Mapped[datetime] = mapped_column(default=utcnow)


class JobUpload(Base):
    """A blob the job's runner uploaded through the server (verified on the way in): what a
    job may later claim as its output, besides its inputs."""

    __tablename__ = "job_uploads"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    digest: Mapped[str] = mapped_column(String(80), primary_key=True)


class Worker(Base):
    """A machine connected with ``forgehub worker``; it long-polls for jobs."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(128))
    labels: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cpus: Mapped[float] = mapped_column(default=1.0)
    gpus: Mapped[int] = mapped_column(default=0)
    gpu_models: Mapped[list[Any]] = mapped_column(JSON, default=list)  # one per GPU
    gpu_memory_mb: Mapped[list[Any]] = mapped_column(JSON, default=list)  # one per GPU
    memory_mb: Mapped[int] = mapped_column(default=0)
    shared: Mapped[bool] = mapped_column(default=False)
    version: Mapped[str] = mapped_column(String(32), default="")
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Deployment(Base):
    """A module served for as long as its owner wants: a model API or a JupyterLab, run by a job
    of kind ``service`` on any compute and reached through the platform at
    ``/deployments/{id}/`` (see :mod:`forgehub.deployments`)."""

    __tablename__ = "deployments"
    __table_args__ = (Index("ix_deployments_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    title: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    module: Mapped[str | None] = mapped_column(String(128), default=None)
    version: Mapped[str | None] = mapped_column(String(64), default=None)
    service: Mapped[str] = mapped_column(String(16))  # api | jupyterlab
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # resources, inputs, ttl, …
    compute_id: Mapped[str] = mapped_column(
        ForeignKey("compute_connections.id", ondelete="CASCADE")
    )
    state: Mapped[DeploymentState] = mapped_column(
        Enum(DeploymentState, native_enum=False, length=16), default=DeploymentState.pending
    )
    reason: Mapped[str | None] = mapped_column(Text, default=None)
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    address: Mapped[str | None] = mapped_column(String(255), default=None)  # host:port
    ready_attempt: Mapped[int | None] = mapped_column(default=None)
    token_sealed: Mapped[str] = mapped_column(Text)  # the service's own token, sealed
    restart: Mapped[bool] = mapped_column(default=False)
    restarts: Mapped[int] = mapped_column(default=0)
    save_request: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    saved: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    stop_requested_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    shares: Mapped[list[DeploymentShare]] = relationship(
        cascade="all, delete-orphan", lazy="selectin"
    )

    @property
    def shared_with(self) -> set[str]:
        """The users (ids) its owner shared it with: they may open it and see it."""
        return {sh.user_id for sh in self.shares}

    @classmethod
    def shared_rows(cls, user_id: str) -> Any:
        """Where-clause: the deployments shared with ``user_id``."""
        return cls.id.in_(
            select(DeploymentShare.deployment_id).where(DeploymentShare.user_id == user_id)
        )


class DeploymentShare(Base):
    """A deployment its owner shared with another user."""

    __tablename__ = "deployment_shares"

    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), primary_key=True
    )
    user_id: Mapped[str] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class DeploymentReplica(Base):
    """One replica of a scaled inference deployment: a model API service carried by its own
    job. The autoscaler adds them and drains them (no new requests, then its job is stopped)."""

    __tablename__ = "deployment_replicas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    job_id: Mapped[str] = mapped_column(String(32), index=True)
    address: Mapped[str | None] = mapped_column(String(255), default=None)  # host:port | tunnel
    ready_attempt: Mapped[int | None] = mapped_column(default=None)
    draining_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    ready_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_at: Mapped[datetime | None] = mapped_column(default=None)
    ended_reason: Mapped[str | None] = mapped_column(Text, default=None)


class DeploymentEvent(Base):
    """One state change of a deployment, with its time."""

    __tablename__ = "deployment_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    deployment_id: Mapped[str] = mapped_column(
        ForeignKey("deployments.id", ondelete="CASCADE"), index=True
    )
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str | None] = mapped_column(Text, default=None)
    at: Mapped[datetime] = mapped_column(default=utcnow)


class Pipeline(Base):
    """A saved pipeline definition (steps, parameters, defaults), by owner and name."""

    __tablename__ = "pipelines"
    __table_args__ = (UniqueConstraint("owner_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    description: Mapped[str] = mapped_column(Text, default="")
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)
    published: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineRun(Base):
    """One run of a pipeline: its parameters and compute choices, and its steps' states."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (Index("ix_pipeline_runs_owner_created", "owner_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    pipeline_id: Mapped[str] = mapped_column(
        ForeignKey("pipelines.id", ondelete="CASCADE"), index=True
    )
    definition: Mapped[dict[str, Any]] = mapped_column(default=dict)  # as it ran
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)  # on, store, no_cache, steps
    state: Mapped[str] = mapped_column(String(16), default="running", index=True)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)

    steps: Mapped[list[PipelineStep]] = relationship(cascade="all, delete-orphan")


class RateBucket(Base):
    """A token bucket shared by several servers (visitors' try-it rate, per address)."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(128), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    at: Mapped[float] = mapped_column(Float)  # time.time() of the last take
    ok: Mapped[bool] = mapped_column(default=True)  # whether the last take got a token


class PipelineStep(Base):
    """A step of a run: waiting, then cached (an earlier identical step's outputs) or carried
    by a job; its outputs once it succeeded."""

    __tablename__ = "pipeline_steps"

    run_id: Mapped[str] = mapped_column(
        ForeignKey("pipeline_runs.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16), default="waiting")
    job_id: Mapped[str | None] = mapped_column(String(32), default=None, index=True)
    cache_key: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    cached_from: Mapped[str | None] = mapped_column(String(32), default=None)  # a run id
    inputs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> digest
    outputs: Mapped[dict[str, Any]] = mapped_column(default=dict)  # name -> {id, digest}
    error: Mapped[str | None] = mapped_column(Text, default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
