"""/api/v1/blobs: forgehub's content-addressed blob server.

``POST /uploads`` starts a (resumable) upload; ``PATCH /uploads/{id}`` appends a chunk at
``Upload-Offset``; ``HEAD /uploads/{id}`` says how far it got; ``PUT /uploads/{id}?digest=``
verifies and commits. ``PUT /{digest}`` uploads in one request. ``HEAD|GET /{digest}`` read, with
ranges. A user may read the blobs they uploaded (admins every blob).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import anyio.from_thread
import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError as DbIntegrityError

from forgehub.auth import Principal
from forgehub.db.models import BlobOwner
from forgehub.identity import authz
from forgehub.server.deps import CurrentUser, DbSession
from forgehub.server.streaming import body_chunks
from forgehub.storage.base import IntegrityError
from forgehub.storage.blobstore import BlobStore, check_digest

router = APIRouter(prefix="/blobs", tags=["blobs"])


def store(request: Request) -> BlobStore:
    s: BlobStore = request.app.state.blobs
    return s


def _limit(request: Request) -> int:
    return int(request.app.state.settings.max_blob_mb) * 1024 * 1024


def _owned(session: Any, digest: str, principal: Principal) -> bool:
    row = session.scalar(
        select(BlobOwner).where(BlobOwner.digest == digest, BlobOwner.user_id == principal.user_id)
    )
    return authz.can(principal, "blob.read", row or authz.NOBODYS)


def _own(session: Any, digest: str, size: int, principal: Principal) -> None:
    if principal.user_id and not session.scalar(
        select(BlobOwner).where(BlobOwner.digest == digest, BlobOwner.user_id == principal.user_id)
    ):
        session.add(BlobOwner(digest=digest, user_id=principal.user_id, size=size))
        try:
            session.flush()
        except DbIntegrityError:  # a concurrent upload of the same blob by the same user
            session.rollback()


def _prove(chunks: Iterator[bytes], digest: str, limit: int) -> int:
    """Read an upload of content the store already holds; its size if it hashes to ``digest``."""
    h, size = hashlib.sha256(), 0
    for c in chunks:
        size += len(c)
        if size > limit:
            raise IntegrityError(f"blob larger than the limit of {limit // (1 << 20)} MB")
        h.update(c)
    if f"sha256:{h.hexdigest()}" != digest:
        raise IntegrityError(f"the uploaded bytes do not match {digest}")
    return size


def _digest(digest: str) -> str:
    return check_digest(digest)  # InvalidKey: 422, by the one storage error handler


@router.post("/uploads", status_code=201, summary="Start a resumable upload")
def start_upload(principal: CurrentUser, request: Request) -> dict[str, Any]:
    upload_id = store(request).start_upload()
    return {"upload_id": upload_id, "offset": 0, "location": f"/api/v1/blobs/uploads/{upload_id}"}


@router.head("/uploads/{upload_id}", summary="How many bytes an upload holds")
def upload_status(upload_id: str, principal: CurrentUser, request: Request) -> Response:
    offset = store(request).upload_offset(upload_id)
    return Response(headers={"Upload-Offset": str(offset)})


@router.patch("/uploads/{upload_id}", summary="Append a chunk at Upload-Offset")
async def append(upload_id: str, principal: CurrentUser, request: Request) -> Response:
    try:
        offset = int(request.headers.get("upload-offset", "0"))
    except ValueError:
        raise HTTPException(422, "Upload-Offset must be an integer") from None
    blobs, limit = store(request), _limit(request)
    new = await anyio.to_thread.run_sync(
        lambda: blobs.append(upload_id, offset, body_chunks(request), limit)
    )
    return Response(status_code=204, headers={"Upload-Offset": str(new)})


@router.put("/uploads/{upload_id}", status_code=201, summary="Verify and commit an upload")
def commit(
    upload_id: str,
    principal: CurrentUser,
    session: DbSession,
    request: Request,
    digest: str = Query(..., description="sha256:<hex> of the whole blob"),
) -> dict[str, Any]:
    blobs = store(request)
    size = blobs.commit(upload_id, digest)
    _own(session, digest, size, principal)
    return {"digest": digest, "size": size}


@router.delete("/uploads/{upload_id}", status_code=204, summary="Abandon an upload")
def abort(upload_id: str, principal: CurrentUser, request: Request) -> Response:
    store(request).abort(upload_id)
    return Response(status_code=204)


@router.put("/{digest}", status_code=201, summary="Upload a blob in one request")
def put_blob(
    digest: str, principal: CurrentUser, session: DbSession, request: Request
) -> dict[str, Any]:
    """Runs in a worker thread (a sync endpoint): no file or database work on the event loop."""
    blobs, limit = store(request), _limit(request)
    check_digest(digest)
    if blobs.exists(digest):
        # stored once per digest: nothing to write, but the bytes must be sent and match,
        # or knowing a digest would be enough to own (and read) someone else's content
        size = _prove(body_chunks(request), digest, limit)
    else:
        upload_id = blobs.start_upload()
        try:
            blobs.append(upload_id, 0, body_chunks(request), limit)
            size = blobs.commit(upload_id, digest)
        finally:
            blobs.abort(upload_id)
    _own(session, digest, size, principal)
    return {"digest": digest, "size": size}


@router.get("", summary="Blobs you uploaded")
def list_blobs(
    principal: CurrentUser, session: DbSession, limit: int = Query(1000, ge=1, le=10_000)
) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(BlobOwner)
        .where(BlobOwner.user_id == principal.user_id)
        .order_by(BlobOwner.digest)
        .limit(limit)
    )
    return [{"digest": r.digest, "size": r.size} for r in rows]


@router.head("/{digest}", summary="Does the blob exist (for you)?")
def head_blob(
    digest: str, principal: CurrentUser, session: DbSession, request: Request
) -> Response:
    _digest(digest)
    blobs = store(request)
    if not blobs.exists(digest) or not _owned(session, digest, principal):
        return Response(status_code=404)
    return Response(headers={"Content-Length": str(blobs.size(digest)), "Accept-Ranges": "bytes"})


@router.get("/{digest}", summary="Download a blob (Range supported)")
def get_blob(
    digest: str, principal: CurrentUser, session: DbSession, request: Request
) -> FileResponse:
    _digest(digest)
    blobs = store(request)
    if not blobs.exists(digest) or not _owned(session, digest, principal):
        raise HTTPException(404, f"no blob {digest} of yours")
    return FileResponse(
        blobs.path(digest),
        media_type="application/octet-stream",
        headers={"Docker-Content-Digest": digest},
    )


@router.delete("/{digest}", status_code=204, summary="Forget a blob (removed when unowned)")
def delete_blob(
    digest: str, principal: CurrentUser, session: DbSession, request: Request
) -> Response:
    _digest(digest)
    session.execute(
        delete(BlobOwner).where(BlobOwner.digest == digest, BlobOwner.user_id == principal.user_id)
    )
    purge = authz.can(principal, "blob.purge", None)
    if purge or not session.scalar(select(BlobOwner).where(BlobOwner.digest == digest)):
        if purge:
            session.execute(delete(BlobOwner).where(BlobOwner.digest == digest))
        store(request).delete(digest)
    return Response(status_code=204)
