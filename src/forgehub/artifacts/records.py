"""Artifact records in the metadata store: find one by reference, record a stored copy, and
describe a page of them. Used by the API, the dashboard and the jobs that produce outputs."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from forgehub.artifacts.packs import Layout, Packed
from forgehub.auth import Principal
from forgehub.db.models import (
    Artifact,
    ArtifactLocation,
    ArtifactTag,
    PackedFile,
    StorageConnection,
    User,
    utcnow,
)
from forgehub.errors import NotFound
from forgehub.identity import authz
from forgehub.storage.blobstore import DIGEST_RE

ID_RE = re.compile(r"^[0-9a-f]{32}$")


class NoSuchArtifact(NotFound):
    """No artifact by that reference that the caller may see; the message is safe to show."""


def resolve(session: Session, principal: Principal, ref: str) -> Artifact:
    """``sha256:<hex>``, an artifact id, ``name``, ``name:tag`` or ``owner/name:tag`` (someone
    else's only when it is shared with one of your groups); your own first."""
    art: Artifact | None
    if DIGEST_RE.match(ref):
        stmt = authz.visible(
            select(Artifact).where(Artifact.digest == ref), Artifact, principal, "artifact.read"
        )
        mine_first = (Artifact.owner_id == principal.user_id).desc()
        art = session.scalars(stmt.order_by(mine_first, Artifact.created_at)).first()
    elif ID_RE.match(ref) and (art := session.get(Artifact, ref)) is not None:
        pass
    else:
        owner_id = principal.user_id
        rest = ref
        if "/" in ref:
            owner_name, rest = ref.split("/", 1)
            owner_id = session.scalar(select(User.id).where(User.name == owner_name)) or ""
        name, _, tag = rest.partition(":")
        row = session.get(ArtifactTag, (owner_id, name, tag or "latest")) if owner_id else None
        art = session.get(Artifact, row.artifact_id) if row else None
    if art is None or not authz.can(principal, "artifact.read", art):
        raise NoSuchArtifact(f"no artifact {ref!r} of yours")
    return art


def record(
    session: Session,
    owner_id: str,
    connection_id: str,
    digest: str,
    kind: str,
    size: int,
    filename: str,
    media_type: str,
    tags: Iterable[tuple[str, str]] = (),
    producer_job_id: str | None = None,
) -> Artifact:
    """The artifact for ``digest`` (created once per owner), with a copy on the connection and
    the given ``(name, tag)`` tags pointing at it."""
    art = session.scalar(
        select(Artifact).where(Artifact.owner_id == owner_id, Artifact.digest == digest)
    )
    if art is None:
        conn = session.get(StorageConnection, connection_id)
        if conn is not None and conn.is_default:  # forgehub-managed storage: a quota's bytes
            from forgehub.identity import quotas

            quotas.check(session, owner_id, {"stored_bytes": size})
        art = Artifact(
            owner_id=owner_id,
            digest=digest,
            kind=kind,
            size=size,
            media_type=media_type,
            filename=filename,
            producer_job_id=producer_job_id,
        )
        session.add(art)
        session.flush()
    if session.get(ArtifactLocation, (art.id, connection_id)) is None:
        session.add(ArtifactLocation(artifact_id=art.id, connection_id=connection_id))
    for name, tag in tags:
        row = session.get(ArtifactTag, (owner_id, name, tag))
        if row is None:
            session.add(ArtifactTag(owner_id=owner_id, name=name, tag=tag, artifact_id=art.id))
        else:
            row.artifact_id, row.updated_at = art.id, utcnow()
    session.flush()
    return art


def describe(session: Session, arts: list[Artifact]) -> list[dict[str, Any]]:
    """Artifacts as API objects; locations and tags of all of them in two queries."""
    ids = [a.id for a in arts]
    locs: dict[str, list[dict[str, str]]] = {i: [] for i in ids}
    tags: dict[str, list[str]] = {i: [] for i in ids}
    if ids:
        for aid, name, kind in session.execute(
            select(ArtifactLocation.artifact_id, StorageConnection.name, StorageConnection.kind)
            .join(StorageConnection, ArtifactLocation.connection_id == StorageConnection.id)
            .where(ArtifactLocation.artifact_id.in_(ids))
        ):
            locs[aid].append({"connection": name, "kind": kind})
        for t in session.scalars(select(ArtifactTag).where(ArtifactTag.artifact_id.in_(ids))):
            tags[t.artifact_id].append(f"{t.name}:{t.tag}")
    return [
        {
            "id": art.id,
            "digest": art.digest,
            "kind": art.kind,
            "size": art.size,
            "media_type": art.media_type,
            "filename": art.filename,
            "producer_job_id": art.producer_job_id,
            "created_at": art.created_at.isoformat(),
            "locations": locs[art.id],
            "tags": tags[art.id],
        }
        for art in arts
    ]


# -- packed files: what a connection's store already holds in packs ---------------------------
def known_packed(session: Session, connection_id: str, digests: Iterable[str]) -> Layout:
    """Where the store of ``connection_id`` holds those of ``digests`` that it has packed."""
    wanted = sorted(set(digests))
    out: Layout = {}
    for i in range(0, len(wanted), 500):  # bounded IN lists, for every database
        rows = session.scalars(
            select(PackedFile).where(
                PackedFile.connection_id == connection_id,
                PackedFile.digest.in_(wanted[i : i + 500]),
            )
        )
        out.update({r.digest: Packed(r.pack, r.offset, r.size) for r in rows})
    return out


def remember_packed(session: Session, connection_id: str, layout: Layout) -> None:
    """Record where a push put small files (the first place each is known is kept)."""
    have = known_packed(session, connection_id, layout)
    rows = [
        {
            "connection_id": connection_id,
            "digest": d,
            "pack": w.pack,
            "offset": w.offset,
            "size": w.size,
        }
        for d, w in layout.items()
        if d not in have
    ]
    if rows:  # one bulk INSERT (20,000 files: no unit of work tracking 20,000 objects)
        session.execute(insert(PackedFile), rows)


def forget_packs(session: Session, connection_ids: list[str], packs: Iterable[str]) -> None:
    """Packs a collection removed: later pushes store their files again."""
    gone = sorted(set(packs))
    for i in range(0, len(gone), 500):
        session.execute(
            delete(PackedFile).where(
                PackedFile.connection_id.in_(connection_ids),
                PackedFile.pack.in_(gone[i : i + 500]),
            )
        )
