"""The platform's own content-addressed blob store, on local disk (served under /api/v1/blobs/).

Content is stored once per digest at ``blobs/sha256/<2 hex>/<64 hex>``. Uploads are written to
``uploads/<id>`` (resumable: a client can ask how far it got and continue), verified against the
digest the client names, and only then renamed into place, atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

from forgehub.storage.errors import IntegrityError, InvalidKey, ObjectNotFound

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
KEY_RE = re.compile(r"^blobs/sha256/([0-9a-f]{2})/([0-9a-f]{64})$")
UPLOAD_RE = re.compile(r"^[A-Za-z0-9_-]{16,64}$")


def check_digest(digest: str) -> str:
    if not DIGEST_RE.match(digest):
        raise InvalidKey(f"{digest!r} is not a digest of the form sha256:<64 hex digits>")
    return digest


def blob_key(digest: str) -> str:
    hexd = check_digest(digest).split(":", 1)[1]
    return f"blobs/sha256/{hexd[:2]}/{hexd}"


def key_digest(key: str) -> str:
    m = KEY_RE.match(key)
    if not m or m.group(1) != m.group(2)[:2]:
        raise InvalidKey(
            f"{key!r} is not a content-addressed blob key (blobs/sha256/<2 hex>/<64 hex>)"
        )
    return f"sha256:{m.group(2)}"


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "uploads").mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.root / blob_key(digest)

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def size(self, digest: str) -> int:
        try:
            return self.path(digest).stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"no blob {digest}") from None

    # -- uploads ----------------------------------------------------------------------------
    def _upload(self, upload_id: str) -> Path:
        if not UPLOAD_RE.match(upload_id):
            raise InvalidKey("invalid upload id")
        return self.root / "uploads" / upload_id

    def start_upload(self) -> str:
        upload_id = secrets.token_urlsafe(24)
        self._upload(upload_id).touch()
        return upload_id

    def upload_offset(self, upload_id: str) -> int:
        path = self._upload(upload_id)
        try:
            return path.stat().st_size
        except FileNotFoundError:
            raise ObjectNotFound(f"no upload {upload_id!r} (expired or committed)") from None

    def append(self, upload_id: str, offset: int, chunks: Iterator[bytes], limit: int) -> int:
        """Append at ``offset`` (which must be the current size); returns the new size."""
        current = self.upload_offset(upload_id)
        if offset != current:
            raise IntegrityError(f"upload is at byte {current}, not {offset}; resume from there")
        path = self._upload(upload_id)
        with open(path, "ab") as out:
            for block in chunks:
                current += len(block)
                if current > limit:
                    raise IntegrityError(f"blob larger than the limit of {limit} bytes")
                out.write(block)
        return current

    def commit(self, upload_id: str, digest: str) -> int:
        """Verify the upload against ``digest`` and move it into place; returns its size."""
        check_digest(digest)
        path = self._upload(upload_id)
        if not path.exists():
            raise ObjectNotFound(f"no upload {upload_id!r} (expired or committed)")
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                h.update(block)
        actual = f"sha256:{h.hexdigest()}"
        if actual != digest:
            path.unlink(missing_ok=True)
            raise IntegrityError(f"the uploaded bytes have digest {actual}, not {digest}")
        target = self.path(digest)
        target.parent.mkdir(parents=True, exist_ok=True)
        size = path.stat().st_size
        if target.exists():
            path.unlink()
        else:
            os.replace(path, target)
        return size

    def abort(self, upload_id: str) -> None:
        self._upload(upload_id).unlink(missing_ok=True)

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
