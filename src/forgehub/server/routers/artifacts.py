"""/api/v1/artifacts: push, pull, list, tag, copy, delete and garbage-collect artifacts.

Uploads stream into a temporary file (never into memory) with a size limit, then go to the chosen
storage connection, once per digest. Downloads stream from the storage, verified against the
digest; a directory downloads as a tar stream built on the fly.
"""

from __future__ import annotations

import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.artifacts import collect, records, untar
from forgehub.artifacts import connections as conns
from forgehub.artifacts.content import (
    MANIFEST_MEDIA_TYPE,
    describe_manifest,
    hash_bytes,
    holds,
    parse_manifest,
    push_path,
    push_stream_locally,
    referenced_blobs,
    tree_contents,
    verified_stream,
)
from forgehub.artifacts.packs import (
    PACK_BELOW,
    PACK_SIZE,
    Layout,
    decode_layout,
    encode_layout,
    layout_key,
    read_layout,
)
from forgehub.auth import Principal
from forgehub.db.models import Artifact, ArtifactLocation, ArtifactTag, StorageConnection
from forgehub.errors import Conflict, Forbidden, Invalid, TooLarge, Upstream
from forgehub.http_headers import content_disposition
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession
from forgehub.server.streaming import body_chunks
from forgehub.storage import StorageError
from forgehub.storage.base import IntegrityError
from forgehub.storage.blobstore import blob_key, check_digest
from forgehub.storage.local import LocalStorage

router = APIRouter(prefix="/artifacts", tags=["artifacts"])
TAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
TAR = "application/x-tar"
MAX_DIRECT_OBJECTS = 5000


class TagIn(BaseModel):
    name: str = Field(pattern=TAG_RE.pattern)
    tag: str = Field(default="latest", pattern=TAG_RE.pattern, max_length=64)


class CopyIn(BaseModel):
    to: str = Field(description="Target connection name.")
    move: bool = Field(default=False, description="Remove it from its other locations.")


class GcIn(BaseModel):
    connection: str
    dry_run: bool = True


def _box(request: Request) -> Any:
    return request.app.state.secrets


def _conn(
    session: Session, principal: Principal, name: str | None, request: Request
) -> StorageConnection:
    if name:
        conn = conns.find(session, principal, name)
        authz.require(principal, "connection.use", conn, f"storage connection {name!r}")
        return conn
    return conns.ensure_default(
        session, _box(request), principal.user_id, request.app.state.settings.default_store
    )


def resolve(
    session: Session, principal: Principal, ref: str, action: str = "artifact.read"
) -> Artifact:
    """``sha256:<hex>``, ``name``, ``name:tag`` or ``owner/name:tag``; 404 if none."""
    art = records.resolve(session, principal, ref)
    authz.require(principal, action, art, f"artifact {ref!r}")
    return art


_outs = records.describe


def _out(session: Session, art: Artifact) -> dict[str, Any]:
    return _outs(session, [art])[0]


def _adapter_with(session: Session, art: Artifact, request: Request) -> Any:
    for loc in session.scalars(
        select(ArtifactLocation).where(ArtifactLocation.artifact_id == art.id)
    ):
        conn = session.get(StorageConnection, loc.connection_id)
        if conn is not None:
            return conns.adapter_for(conn, _box(request))
    raise Conflict(f"artifact {art.digest} has no location left")


class KnownIn(BaseModel):
    digest: str = Field(pattern=r"^sha256:[0-9a-f]{64}$")
    filename: str = Field(default="", max_length=255)
    name: str | None = Field(default=None, pattern=TAG_RE.pattern)
    tag: str = Field(default="latest", pattern=TAG_RE.pattern, max_length=64)
    connection: str | None = Field(default=None, description="Connection name [default].")


@router.post(
    "/known",
    summary="Push nothing: your own artifact with this digest on that store, tagged as asked "
    "(404: push the content)",
)
def known(
    body: KnownIn, request: Request, principal: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """A re-push of unchanged content costs this one request. Only an artifact the caller
    owns counts: knowing a digest is not owning its content."""
    from forgehub.errors import NotFound

    conn = _conn(session, principal, body.connection, request)
    art = session.scalars(
        select(Artifact)
        .join(ArtifactLocation, ArtifactLocation.artifact_id == Artifact.id)
        .where(
            Artifact.digest == body.digest,
            Artifact.owner_id == principal.user_id,
            ArtifactLocation.connection_id == conn.id,
        )
        .order_by(Artifact.created_at)
    ).first()
    if art is None:
        raise NotFound(f"no artifact of yours with that digest on {conn.name!r}; push it")
    art = records.record(
        session,
        principal.user_id,
        conn.id,
        art.digest,
        art.kind,
        art.size,
        body.filename if art.kind == "file" else art.filename,
        art.media_type,
        [(body.name, body.tag)] if body.name else (),
    )
    return {**_out(session, art), "uploaded": 0}


# -- direct transfers: the server grants and records, the client moves the bytes -------------
DIGEST = r"^sha256:[0-9a-f]{64}$"
GRANT_S = 900


class PlanIn(BaseModel):
    connection: str | None = Field(default=None, description="Connection name [default].")
    files: list[tuple[str, int]] = Field(
        max_length=1_000_000, description="(digest, size) of each distinct file to push."
    )


class ObjectIn(BaseModel):
    digest: str = Field(pattern=DIGEST)
    size: int = Field(ge=0)


class GrantsIn(BaseModel):
    connection: str | None = None
    objects: list[ObjectIn] = Field(max_length=10_000)


class CommitIn(BaseModel):
    connection: str | None = None
    kind: Literal["file", "dir"]
    digest: str = Field(pattern=DIGEST)
    manifest: str | None = Field(default=None, description="A folder's manifest, as pushed.")
    layout: dict[str, Any] | None = Field(default=None, description="Where its files are packed.")
    filename: str = Field(default="", max_length=255)
    name: str | None = Field(default=None, pattern=TAG_RE.pattern)
    tag: str = Field(default="latest", pattern=TAG_RE.pattern, max_length=64)


def _direct(session: Session, principal: Principal, name: str | None, request: Request) -> Any:
    conn = _conn(session, principal, name, request)
    adapter = conns.adapter_for(conn, _box(request))
    if not adapter.direct:
        raise Conflict(
            f"{conn.kind} stores are reached through the server: push with POST /api/v1/artifacts"
        )
    return conn, adapter


def _parallel(fn: Any, items: list[Any]) -> list[Any]:
    from concurrent.futures import ThreadPoolExecutor

    from forgehub.artifacts.parallel import WORKERS

    if not items:
        return []
    with ThreadPoolExecutor(min(WORKERS, len(items))) as pool:
        return list(pool.map(fn, items))


@router.post("/transfers/plan", summary="Before a push: what the store holds, and how to send")
def transfer_plan(
    body: PlanIn, request: Request, principal: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """Which of the files the store already holds: small ones in packs (``packed``: where),
    large ones as blobs (``stored``). ``direct``: the client sends the rest to the store itself
    with grants (``/transfers/grants``) and then records it (``/transfers/commit``); otherwise it
    pushes through the server (``POST /api/v1/artifacts``)."""
    conn = _conn(session, principal, body.connection, request)
    adapter = conns.adapter_for(conn, _box(request))
    for digest, _size in body.files:
        check_digest(digest)
    packed = records.known_packed(session, conn.id, (d for d, _ in body.files))
    session.commit()
    large = [(d, n) for d, n in body.files if n >= PACK_BELOW and d not in packed]
    try:
        held = _parallel(lambda f: holds(adapter, blob_key(f[0]), f[1]), large)
    except StorageError as exc:
        raise Upstream(f"storage {conn.name!r} failed: {exc}") from exc
    return {
        "direct": adapter.direct,
        "packed": {d: [w.pack, w.offset, w.size] for d, w in packed.items()},
        "stored": [d for (d, _), h in zip(large, held, strict=True) if h],
        "pack_below": PACK_BELOW,
        "pack_size": PACK_SIZE,
    }


@router.post("/transfers/grants", summary="Short-lived URLs to store blobs in your store")
def transfer_grants(
    body: GrantsIn, request: Request, principal: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """Presigned requests, each for one content-addressed blob of the named connection, valid
    for 15 minutes: the bytes go to the store, never through the server."""
    conn, adapter = _direct(session, principal, body.connection, request)
    session.commit()
    limit = int(request.app.state.settings.max_artifact_mb) * 1024 * 1024
    for o in body.objects:
        if o.size > limit:
            raise TooLarge(f"{o.digest}: larger than the limit of {limit >> 20} MB")
    try:
        grants = _parallel(
            lambda o: adapter.grant_put(blob_key(o.digest), o.size, GRANT_S), body.objects
        )
    except StorageError as exc:
        raise Upstream(f"storage {conn.name!r} failed: {exc}") from exc
    return {"grants": {o.digest: g for o, g in zip(body.objects, grants, strict=True)}}


@router.post(
    "/transfers/commit", status_code=201, summary="Record content sent directly to your store"
)
def transfer_commit(
    body: CommitIn, request: Request, principal: CurrentUser, session: DbSession
) -> dict[str, Any]:
    """The server checks that the store holds every blob the artifact needs (each file loose
    or in a pack the layout names, or packed by an earlier push), then stores the manifest and
    layout itself and records the artifact. A client that skipped an upload gets 409."""
    conn, adapter = _direct(session, principal, body.connection, request)
    if body.kind == "file":
        need: list[tuple[str, int | None]] = [(body.digest, None)]
        size, layout, manifest = None, {}, b""
    else:
        if body.manifest is None:
            raise Invalid("a folder's commit carries its manifest")
        manifest = body.manifest.encode()
        if hash_bytes(manifest) != body.digest:
            raise Invalid("the manifest does not have the digest the commit names")
        try:
            entries = parse_manifest(manifest)
            layout = decode_layout(body.layout) if body.layout else {}
        except IntegrityError as exc:
            raise Invalid(str(exc)) from exc
        sizes = {e.digest: e.size for e in entries}
        for d, w in layout.items():
            if sizes.get(d) != w.size:
                raise Invalid(f"the layout places {d}, which the manifest does not hold")
        earlier = records.known_packed(session, conn.id, set(sizes) - set(layout))
        layout.update(earlier)
        ends: dict[str, int] = {}
        for w in layout.values():
            ends[w.pack] = max(ends.get(w.pack, 0), w.offset + w.size)
        need = [(d, sizes[d]) for d in sizes if d not in layout]
        need += [(p, -end) for p, end in ends.items()]  # a pack at least this long
        size = sum(e.size for e in entries)
    session.commit()

    def missing(item: tuple[str, int | None]) -> str | None:
        info = adapter.stat(blob_key(item[0]))
        n = item[1]
        if info is None or (n is not None and (info.size < -n if n < 0 else info.size != n)):
            return item[0]
        return None

    try:
        absent = [d for d in _parallel(missing, need) if d]
        if absent:
            raise Conflict(
                f"the store lacks {len(absent)} blob(s) this artifact needs "
                f"(first: {absent[0]}); upload them, then commit"
            )
        if body.kind == "file":
            info = adapter.stat(blob_key(body.digest))
            size = info.size if info else 0
        else:
            if layout:
                adapter.put(layout_key(body.digest), encode_layout(layout))
            if not holds(adapter, blob_key(body.digest), len(manifest)):
                adapter.put(blob_key(body.digest), manifest)
    except StorageError as exc:
        raise Upstream(f"storage {conn.name!r} failed: {exc}") from exc
    records.remember_packed(session, conn.id, layout)
    art = records.record(
        session,
        principal.user_id,
        conn.id,
        body.digest,
        body.kind,
        size or 0,
        body.filename if body.kind == "file" else "",
        MANIFEST_MEDIA_TYPE if body.kind == "dir" else "application/octet-stream",
        [(body.name, body.tag)] if body.name else (),
    )
    return _out(session, art)


@router.post("", status_code=201, summary="Push an artifact (a file, or a directory as tar)")
def push(
    request: Request,
    principal: CurrentUser,
    session: DbSession,
    filename: str = Query("", max_length=255),
    name: str | None = Query(None, pattern=TAG_RE.pattern),
    tag: str = Query("latest", pattern=TAG_RE.pattern, max_length=64),
    connection: str | None = Query(None, description="Connection name [default: default]"),
) -> dict[str, Any]:
    conn = _conn(session, principal, connection, request)
    adapter = conns.adapter_for(conn, _box(request))
    session.commit()  # no transaction stays open while the bytes arrive
    limit = int(request.app.state.settings.max_artifact_mb) * 1024 * 1024
    is_tar = request.headers.get("content-type", "").startswith(TAR)
    tmp = Path(tempfile.mkdtemp(prefix="forgehub-push-", dir=request.app.state.settings.data_dir))

    def received() -> Iterator[bytes]:
        total = 0
        for chunk in body_chunks(request):
            total += len(chunk)
            if total > limit:
                raise HTTPException(
                    413,
                    f"artifact larger than the limit of "
                    f"{limit // (1024 * 1024)} MB (max_artifact_mb)",
                )
            yield chunk

    def receive_and_store() -> tuple[Any, str]:
        if not is_tar and isinstance(adapter, LocalStorage):
            try:  # the server's own disk: stored as it arrives, hashed alongside, one pass
                return push_stream_locally(adapter, received(), allow_empty=False), filename
            except ValueError:
                raise HTTPException(422, "the request body is empty") from None
        body = tmp / "body"
        total = 0
        with open(body, "wb") as out:
            for chunk in received():
                total += len(chunk)
                out.write(chunk)
        if total == 0 and not is_tar:
            raise HTTPException(422, "the request body is empty")
        source = body
        if is_tar:
            source = tmp / "tree"
            source.mkdir()
            _unpack(body, source, limit)
            body.unlink()

        def known(digests: set[str]) -> Layout:  # held in packs: pointed at, not re-sent
            held = records.known_packed(session, conn.id, digests)
            session.commit()
            return held

        return push_path(adapter, source, known=known), ("" if is_tar else filename)

    try:
        result, fname = receive_and_store()
    except StorageError as exc:
        raise HTTPException(502, f"storage {conn.name!r} failed: {exc}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    media = (
        "application/vnd.forgehub.manifest.v1+json"
        if result.kind == "dir"
        else (request.headers.get("x-media-type") or "application/octet-stream")
    )
    records.remember_packed(session, conn.id, result.layout)
    art = records.record(
        session,
        principal.user_id,
        conn.id,
        result.digest,
        result.kind,
        result.size,
        fname,
        media,
        [(name, tag)] if name else (),
    )
    return {**_out(session, art), "uploaded": result.uploaded}


def _unpack(archive: Path, dest: Path, limit: int) -> None:
    """Unpack a pushed folder: the limit applies to what it unpacks to, and links, devices and
    paths outside the folder are refused with a message (never dropped without a word)."""
    try:
        with open(archive, "rb") as body:
            untar.unpack(body, dest, limit=limit, times=False)
    except untar.TooLarge:
        raise TooLarge(
            f"the folder unpacks to more than the limit of "
            f"{limit // (1024 * 1024)} MB (max_artifact_mb)"
        ) from None
    except untar.NotAFile as exc:
        raise Invalid(
            f"{exc.name}: links cannot be pushed (push what it points to instead)"
            if exc.link
            else f"{exc.name}: only files and folders can be pushed"
        ) from None
    except untar.Refused as exc:
        raise Invalid(f"the tar archive was refused: {exc}") from exc
    except OSError as exc:
        raise Invalid(f"not a valid tar archive: {exc}") from exc


@router.get("", summary="Your artifacts")
def list_artifacts(
    principal: CurrentUser,
    session: DbSession,
    name: str | None = None,
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0, le=2**62),
) -> list[dict[str, Any]]:
    stmt = authz.visible(select(Artifact), Artifact, principal, "artifact.read")
    if name:
        stmt = stmt.join(ArtifactTag, ArtifactTag.artifact_id == Artifact.id).where(
            ArtifactTag.name == name
        )
    rows = (
        session.scalars(stmt.order_by(Artifact.created_at.desc()).limit(limit).offset(offset))
        .unique()
        .all()
    )
    return _outs(session, list(rows))


@router.get("/{ref:path}/content", summary="Download (a directory comes as a tar stream)")
def content(
    ref: str, principal: CurrentUser, session: DbSession, request: Request
) -> StreamingResponse:
    art = resolve(session, principal, ref)
    adapter = _adapter_with(session, art, request)
    headers = {"X-Forgehub-Digest": art.digest, "X-Forgehub-Kind": art.kind}
    if art.kind == "file":
        if art.filename:
            headers["Content-Disposition"] = content_disposition(art.filename)
        headers["Content-Length"] = str(art.size)
        return StreamingResponse(
            verified_stream(adapter, art.digest), media_type=art.media_type, headers=headers
        )
    mtime = int(art.created_at.timestamp())
    return StreamingResponse(
        _tar_stream(adapter, art.digest, mtime), media_type=TAR, headers=headers
    )


def _tar_stream(adapter: Any, digest: str, mtime: int) -> Iterator[bytes]:
    """The folder as a tar built on the fly; files carry the time the artifact was stored
    (content addressing keeps no per-file times)."""
    for same, opened in tree_contents(adapter, digest):
        for e in same:
            info = tarfile.TarInfo(e.path)
            info.size, info.mode, info.mtime = e.size, e.mode, mtime
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            yield from opened()
            if e.size % 512:
                yield b"\0" * (512 - e.size % 512)
    yield b"\0" * 1024


@router.get("/{ref:path}/plan", summary="How to download an artifact straight from its store")
def pull_plan(
    ref: str, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    """For a store the client may reach itself (``direct``): the files, where the packed ones
    are, and a short-lived URL for each object to read (a pack or a file). Otherwise
    ``direct`` is false: download ``/content`` through the server."""
    art = resolve(session, principal, ref)
    adapter = _adapter_with(session, art, request)
    session.commit()
    out: dict[str, Any] = {"digest": art.digest, "kind": art.kind, "size": art.size}
    if not adapter.direct:
        return {**out, "direct": False}
    try:
        if art.kind == "file":
            return {
                **out,
                "direct": True,
                "urls": {art.digest: adapter.presign(blob_key(art.digest), GRANT_S)},
            }
        entries = parse_manifest(b"".join(verified_stream(adapter, art.digest)))
        layout = read_layout(adapter, art.digest)
        objects = {w.pack for w in layout.values()} | {
            e.digest for e in entries if e.digest not in layout
        }
        if len(objects) > MAX_DIRECT_OBJECTS:  # signing each costs more than the relay
            return {**out, "direct": False}
        keys = sorted(objects)
        urls = _parallel(lambda d: adapter.presign(blob_key(d), GRANT_S), keys)
    except StorageError as exc:
        raise Upstream(f"storage failed: {exc}") from exc
    return {
        **out,
        "direct": True,
        "files": [e.__dict__ for e in entries],
        "layout": {d: [w.pack, w.offset, w.size] for d, w in layout.items()},
        "urls": dict(zip(keys, urls, strict=True)),
    }


@router.get("/{ref:path}", summary="One artifact: digest, size, locations, tags, files")
def show(ref: str, principal: CurrentUser, session: DbSession, request: Request) -> dict[str, Any]:
    art = resolve(session, principal, ref)
    out = _out(session, art)
    if art.kind == "dir":
        try:
            out["files"] = describe_manifest(_adapter_with(session, art, request), art.digest)
        except StorageError as exc:
            out["files_error"] = str(exc)
    return out


@router.post("/{ref:path}/tags", summary="Tag an artifact (name:tag)")
def add_tag(ref: str, body: TagIn, principal: CurrentUser, session: DbSession) -> dict[str, Any]:
    art = resolve(session, principal, ref, "artifact.tag")
    loc = session.scalars(
        select(ArtifactLocation).where(ArtifactLocation.artifact_id == art.id)
    ).first()
    conn = session.get(StorageConnection, loc.connection_id) if loc else None
    if conn is None:
        raise Conflict("artifact has no location")
    records.record(
        session,
        art.owner_id,
        conn.id,
        art.digest,
        art.kind,
        art.size,
        art.filename,
        art.media_type,
        [(body.name, body.tag)],
    )
    return _out(session, art)


@router.post("/{ref:path}/copy", summary="Copy or move an artifact to another connection")
def copy(
    ref: str, body: CopyIn, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    art = resolve(session, principal, ref, "artifact.copy")
    target_conn = _conn(session, principal, body.to, request)
    source = _adapter_with(session, art, request)
    target = conns.adapter_for(target_conn, _box(request))
    session.commit()  # no transaction stays open during the transfer

    def transfer() -> int:
        moved = 0
        for key in sorted(referenced_blobs(source, art.digest, art.kind)):
            digest = "sha256:" + key.rsplit("/", 1)[1]
            have = target.stat(key)
            if have is not None:
                continue
            target.put(key, verified_stream(source, digest))
            moved += 1
        if art.kind == "dir":  # where its packed files are (before the manifest that needs it)
            layout = read_layout(source, art.digest)
            if layout:
                target.put(layout_key(art.digest), encode_layout(layout))
        return moved

    try:
        copied = transfer()
    except StorageError as exc:
        raise HTTPException(502, f"copy failed: {exc}") from exc
    if session.get(ArtifactLocation, (art.id, target_conn.id)) is None:
        session.add(ArtifactLocation(artifact_id=art.id, connection_id=target_conn.id))
    if body.move:
        for loc in session.scalars(
            select(ArtifactLocation).where(
                ArtifactLocation.artifact_id == art.id,
                ArtifactLocation.connection_id != target_conn.id,
            )
        ):
            session.delete(loc)
    session.flush()
    return {**_out(session, art), "blobs_copied": copied}


@router.delete(
    "/{ref:path}", status_code=204, summary="Delete an artifact record (gc frees its content)"
)
def delete_artifact(ref: str, principal: CurrentUser, session: DbSession) -> Response:
    art = resolve(session, principal, ref, "artifact.delete")
    session.delete(art)
    return Response(status_code=204)


@router.post("/gc", summary="Garbage-collect unreferenced content of a store you own")
def gc(body: GcIn, principal: CurrentUser, session: DbSession, request: Request) -> dict[str, Any]:
    conn = _conn(session, principal, body.connection, request)
    authz.require(principal, "store.gc", conn, f"storage connection {body.connection!r}")
    if (
        conn.is_default
        and conn.kind == "local"
        and not authz.can(principal, "store.gc_shared", conn)
    ):
        raise Forbidden(
            "the default store is the server's, shared by every user: an admin collects it"
        )
    adapter = conns.adapter_for(conn, _box(request))
    wanted = collect.referenced(session, conn)
    session.commit()
    try:
        keys, freed = collect.sweep(adapter, wanted, body.dry_run)
    except StorageError as exc:
        raise Upstream(f"gc failed: {exc}") from exc
    if not body.dry_run:  # a pack that is gone no longer holds anything for later pushes
        swept = ["sha256:" + k.rsplit("/", 1)[1] for k in keys if k.startswith("blobs/")]
        records.forget_packs(session, collect.same_store(session, conn), swept)
    return {"connection": conn.name, "dry_run": body.dry_run, "unreferenced": keys, "bytes": freed}
