"""Garbage collection of a store: remove the blobs that nobody's record references.

A store can be reached through several connections (two users with the same bucket, every
user's default connection to the server's store). What one connection sees as unreferenced may
be another user's artifact, so the keep-set is built from every connection, of anyone, that
points at the same physical store (``StorageAdapter.store_identity``), plus the blobs that
unfinished jobs have uploaded but not yet recorded.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.artifacts.content import referenced_blobs
from forgehub.artifacts.packs import layout_key
from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    Job,
    JobState,
    JobUpload,
    StorageConnection,
)
from forgehub.storage import StorageAdapter, StorageError, adapter_class
from forgehub.storage.blobstore import blob_key


def same_store(session: Session, conn: StorageConnection) -> list[str]:
    """Ids of every connection (anyone's) that points at the store ``conn`` points at."""
    identity = adapter_class(conn.kind).store_identity
    mine = identity(conn.config)
    rows = session.execute(
        select(StorageConnection.id, StorageConnection.config).where(
            StorageConnection.kind == conn.kind
        )
    ).all()
    return [cid for cid, config in rows if identity(config) == mine]


def referenced(session: Session, conn: StorageConnection) -> list[tuple[str, str]]:
    """(digest, kind) of everything that must stay in ``conn``'s store."""
    ids = same_store(session, conn)
    arts = session.execute(
        select(Artifact.digest, Artifact.kind)
        .join(ArtifactLocation, ArtifactLocation.artifact_id == Artifact.id)
        .where(ArtifactLocation.connection_id.in_(ids))
    ).all()
    unfinished = [s for s in JobState if not s.finished]
    pending = session.scalars(
        select(JobUpload.digest)
        .join(Job, Job.id == JobUpload.job_id)
        .where(Job.storage_id.in_(ids), Job.state.in_(unfinished))
    ).all()
    return sorted({(d, k) for d, k in arts} | {(d, "file") for d in pending})


def sweep(
    adapter: StorageAdapter, wanted: list[tuple[str, str]], dry_run: bool
) -> tuple[list[str], int]:
    """Delete (unless ``dry_run``) the blobs of the store that ``wanted`` does not need."""
    keep: set[str] = set()
    for digest, kind in wanted:
        if kind == "dir":
            keep.add(layout_key(digest))
        try:
            keep |= referenced_blobs(adapter, digest, kind)
        except StorageError:
            keep.add(blob_key(digest))
    prefixes = ("blobs/", "layouts/") if adapter.packs else ("blobs/",)
    garbage = [o for prefix in prefixes for o in adapter.list(prefix) if o.key not in keep]
    if not dry_run:
        for o in garbage:
            adapter.delete(o.key)
    return [o.key for o in garbage], sum(o.size for o in garbage)
