"""What a job's runner may touch, and what it may claim as its output.

* A runner gets a connection's credentials only when it runs on compute its job's owner owns
  and the store is not a folder of the server. Otherwise — a shared worker, or a runner that
  cannot reach the server's disk — every store is reached through the server's relay
  (``/api/v1/jobs/{id}/runner/objects/…``) with the job token.
* Through the relay, a runner reads only the blobs of its own inputs (a directory's manifest and
  the files it lists), and writes only content-addressed blobs, each checked against its digest
  on the way in and remembered for the job (:class:`~forgehub.db.models.JobUpload`).
* A runner's output is recorded only if the server can vouch for its content: every blob it
  needs was uploaded by this job through the relay, is one of its inputs, or already belongs to
  the job's owner; for a store the runner wrote to directly with the owner's credentials, every
  blob must be there. Knowing a digest is never enough.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.artifacts import connections as storage_conns
from forgehub.artifacts.content import parse_manifest, referenced_blobs, verified_stream
from forgehub.artifacts.packs import read_layout
from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    ComputeConnection,
    Job,
    JobUpload,
    StorageConnection,
    Worker,
)
from forgehub.errors import Forbidden, Invalid, NotFound
from forgehub.identity import authz
from forgehub.secrets import SecretBox
from forgehub.storage import StorageError
from forgehub.storage import adapter_class as storage_class
from forgehub.storage.blobstore import blob_key, key_digest


def foreign_worker(session: Session, job: Job) -> bool:
    """Is the job claimed by a worker that is not its owner's (a shared worker)?"""
    if not job.worker_id:
        return False
    w = session.get(Worker, job.worker_id)
    return w is None or not authz.runs_for(w, job.owner_id)


def relayed(session: Session, job: Job, conn: StorageConnection) -> bool:
    """Does the job's runner reach ``conn`` through the server rather than with credentials?"""
    from forgehub.jobs.common import COMPUTE

    if foreign_worker(session, job):
        return True
    if conn.owner_id is not None and conn.owner_id != job.owner_id:
        return True  # someone else's store (a pre-trained version's weights): never their keys
    try:
        on_server = storage_class(conn.kind).on_server
    except StorageError:
        return True
    if not on_server:
        return False
    compute = session.get(ComputeConnection, job.compute_id)
    assert compute is not None
    return not COMPUTE.adapter_class(compute.kind).runs_on_server(compute.config)


def granted(session: Session, job: Job, conn: StorageConnection) -> bool:
    """Does the job's runner reach ``conn`` with signed requests the server grants (a store
    that can sign for others, on its owner's own compute)?"""
    if relayed(session, job, conn):
        return False
    try:
        return bool(storage_class(conn.kind).direct)
    except StorageError:
        return False


def storage_spec(session: Session, job: Job, conn: StorageConnection, box: SecretBox) -> Any:
    """How the runner reaches a store: through the server (``relay``), with grants the server
    signs per object (``grants``: S3), or, for a store that cannot sign for others on its
    owner's own compute (WebDAV, a folder of this machine), with its configuration."""
    if relayed(session, job, conn):
        return {"name": conn.name, "kind": "relay", "config": {"connection": conn.id}}
    if granted(session, job, conn):
        return {"name": conn.name, "kind": "grants", "config": {"connection": conn.id}}
    return {
        "name": conn.name,
        "kind": conn.kind,
        "config": {**conn.config, **box.open(conn.secrets)},
    }


def relay_connection(session: Session, job: Job, connection_id: str) -> StorageConnection:
    """A connection the job's runner may reach through the server: its output storage, or
    where one of its inputs is stored."""
    allowed = {job.storage_id}
    ids = [i["artifact_id"] for i in job.spec.get("inputs", [])]
    if ids:
        allowed |= set(
            session.scalars(
                select(ArtifactLocation.connection_id).where(ArtifactLocation.artifact_id.in_(ids))
            )
        )
    conn = session.get(StorageConnection, connection_id) if connection_id in allowed else None
    if conn is None:
        raise NotFound("this job has no such storage")
    return conn


def blob_digest_of(key: str) -> str:
    """The digest a relay key names; only content-addressed blob keys are served."""
    try:
        return key_digest(key)
    except StorageError:
        raise Invalid(
            f"the relay serves content-addressed blobs only (blobs/sha256/<2 hex>/<64 hex>), "
            f"not {key[:200]!r}"
        ) from None


def readable_digest_of(key: str) -> str:
    """What a relay read names: a blob's digest, or for a folder's layout (which says where
    its packed files are) the folder's own digest: whoever may read one may read the other."""
    if key.startswith("layouts/"):
        return blob_digest_of("blobs/" + key.removeprefix("layouts/"))
    return blob_digest_of(key)


# -- reads: the blobs of the job's inputs ------------------------------------------------------

_READS: OrderedDict[tuple[str, int], frozenset[str]] = OrderedDict()
_READS_LOCK = threading.Lock()


def readable(session: Session, job: Job, box: SecretBox) -> frozenset[str]:
    """Every digest the job's inputs are made of (worked out once per attempt)."""
    key = (job.id, job.attempt)
    with _READS_LOCK:
        if key in _READS:
            _READS.move_to_end(key)
            return _READS[key]
    digests: set[str] = set()
    for item in job.spec.get("inputs", []):
        digests.add(item["digest"])
        if item.get("kind") == "dir":
            conn = _a_location(session, item["artifact_id"])
            if conn is None:
                continue
            adapter = storage_conns.adapter_for(conn, box)
            data = b"".join(verified_stream(adapter, item["digest"]))
            digests |= {e.digest for e in parse_manifest(data)}
            digests |= {w.pack for w in read_layout(adapter, item["digest"]).values()}
    out = frozenset(digests)
    with _READS_LOCK:
        _READS[key] = out
        while len(_READS) > 512:
            _READS.popitem(last=False)
    return out


def uploaded(session: Session, job: Job) -> set[str]:
    return set(session.scalars(select(JobUpload.digest).where(JobUpload.job_id == job.id)))


def may_read(session: Session, job: Job, box: SecretBox, digest: str) -> bool:
    return digest in readable(session, job, box) or digest in uploaded(session, job)


def check_write(job: Job, conn: StorageConnection) -> None:
    if conn.id != job.storage_id:
        raise Forbidden("a job writes only to its output storage")


def remember_upload(session: Session, job: Job, digest: str) -> None:
    if session.get(JobUpload, (job.id, digest)) is None:
        session.add(JobUpload(job_id=job.id, digest=digest))
        session.flush()


def _a_location(session: Session, artifact_id: str) -> StorageConnection | None:
    return session.scalars(
        select(StorageConnection)
        .join(ArtifactLocation, ArtifactLocation.connection_id == StorageConnection.id)
        .where(ArtifactLocation.artifact_id == artifact_id)
    ).first()


# -- outputs -----------------------------------------------------------------------------------


def vouch_for_output(session: Session, job: Job, box: SecretBox, digest: str, kind: str) -> None:
    """Raise unless the server can vouch that the job produced (or may hold) ``digest``."""
    conn = session.get(StorageConnection, job.storage_id)
    assert conn is not None
    adapter = storage_conns.adapter_for(conn, box)
    try:
        keys = referenced_blobs(adapter, digest, kind)
    except StorageError as exc:
        raise Invalid(f"output {digest} is not in the job's storage: {exc}") from exc
    wanted = {key_digest(k) for k in keys}
    if relayed(session, job, conn):
        owned = set(
            session.scalars(
                select(Artifact.digest).where(
                    Artifact.owner_id == job.owner_id, Artifact.digest.in_(wanted)
                )
            )
        )
        missing = wanted - uploaded(session, job) - readable(session, job, box) - owned
        if missing:
            raise Forbidden(
                f"output {digest}: {len(missing)} blob(s) were neither uploaded by this job nor "
                "are its inputs; a job owns only content it uploaded"
            )
        return
    absent = [k for k in sorted(keys) if adapter.stat(k) is None]
    if absent:
        raise Invalid(f"output {digest} is incomplete in the job's storage: {absent[0]} is missing")


__all__ = [
    "blob_key",
    "check_write",
    "foreign_worker",
    "may_read",
    "relay_connection",
    "relayed",
    "remember_upload",
    "storage_spec",
    "vouch_for_output",
]
