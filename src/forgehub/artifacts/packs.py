"""Small files in packs: one object of a few MB holds many of them.

A store answers a small GET or PUT in tens of milliseconds whatever its size, so a folder of
thousands of small files would cost thousands of round trips. A push therefore puts files below
``PACK_BELOW`` bytes side by side in *packs*: content-addressed blobs (``blobs/sha256/…`` like any
other) of about ``PACK_SIZE`` bytes. The folder's *layout*, stored next to its manifest at
``layouts/sha256/<2 hex>/<64 hex of the manifest>``, says which pack holds which file digest at
which offset; it is the packs' index.

The manifest stays the source of truth: the artifact is still the list of (path, digest, size,
mode), and its digest does not depend on how it was packed. Every file stays individually
addressable (a ranged read of its pack) and verifiable (its own digest), and a file already held
in an earlier pack is pointed at, not stored again. A folder without a layout (pushed before packs
existed, or by a client that does not pack) has every file as its own blob: it keeps working.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from forgehub.storage.blobstore import check_digest
from forgehub.storage.errors import IntegrityError, InvalidKey, ObjectNotFound

if TYPE_CHECKING:
    from forgehub.storage.base import StorageAdapter

PACK_BELOW = 256 << 10  # files smaller than this are packed
PACK_SIZE = 4 << 20  # a pack is closed once it holds this much
LAYOUT_MEDIA_TYPE = "application/vnd.forgehub.layout.v1+json"


@dataclass(frozen=True)
class Packed:
    """Where a file's bytes are: ``size`` bytes at ``offset`` in the blob ``pack``."""

    pack: str
    offset: int
    size: int


Layout = dict[str, Packed]  # file digest -> where it is packed


def layout_key(manifest_digest: str) -> str:
    hexd = check_digest(manifest_digest).split(":", 1)[1]
    return f"layouts/sha256/{hexd[:2]}/{hexd}"


def layout_doc(layout: Layout) -> dict[str, Any]:
    """The layout as the JSON mapping stored (and sent with a direct commit)."""
    packs: dict[str, list[list[object]]] = {}
    for digest, where in sorted(layout.items(), key=lambda kv: (kv[1].pack, kv[1].offset)):
        packs.setdefault(where.pack, []).append([digest, where.offset, where.size])
    return {"forgehub.layout": 1, "packs": packs}


def encode_layout(layout: Layout) -> bytes:
    return json.dumps(layout_doc(layout), sort_keys=True, separators=(",", ":")).encode()


class Member(Protocol):
    """A file to pack: its path under the root and its digest (a manifest entry)."""

    @property
    def path(self) -> str: ...

    @property
    def digest(self) -> str: ...


def build(root: Path, members: Sequence[Member]) -> tuple[str, bytearray, Layout]:
    """A pack of these files of ``root``: its digest, its bytes and where each file is in it.
    Each file is checked against its digest as it is read (a file that changed since it was
    hashed is refused, never packed under the wrong name)."""
    buf = bytearray()
    where: list[tuple[str, int, int]] = []
    for m in members:
        data = (root / m.path).read_bytes()
        if _digest(data) != m.digest:
            raise IntegrityError(f"{m.path} changed while it was being pushed; push it again")
        where.append((m.digest, len(buf), len(data)))
        buf += data
    pack = _digest(buf)
    return pack, buf, {d: Packed(pack, o, n) for d, o, n in where}


def split(pack: str, data: bytes, members: list[tuple[str, Packed]]) -> Iterator[tuple[str, bytes]]:
    """The files ``members`` (in offset order) out of ``data``, the pack's bytes from the
    first member's offset on; each checked against its digest."""
    lo = members[0][1].offset
    if len(data) < max(w.offset + w.size for _, w in members) - lo:
        raise IntegrityError(f"pack {pack} is shorter than its layout says")
    for digest, w in members:
        part = data[w.offset - lo : w.offset - lo + w.size]
        if _digest(part) != digest:
            raise IntegrityError(f"corrupted download: {digest} in pack {pack} does not match")
        yield digest, part


def span(members: list[tuple[str, Packed]]) -> tuple[int, int]:
    """The bytes [start, end) of a pack that hold ``members`` (in offset order)."""
    return members[0][1].offset, max(w.offset + w.size for _, w in members)


def _digest(data: bytes | bytearray) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def decode_layout(data: bytes | str | dict[str, Any]) -> Layout:
    """A layout from its JSON (checked: digests, offsets and sizes are well-formed)."""
    try:
        doc: dict[str, Any] = data if isinstance(data, dict) else json.loads(data)
        if doc.get("forgehub.layout") != 1:
            raise ValueError("not a forgehub layout")
        layout: Layout = {}
        for pack, members in dict(doc["packs"]).items():
            check_digest(pack)
            for digest, offset, size in members:
                if int(offset) < 0 or int(size) < 0:
                    raise ValueError("negative offset or size")
                layout[check_digest(digest)] = Packed(pack, int(offset), int(size))
        return layout
    except (ValueError, KeyError, TypeError, InvalidKey) as exc:
        raise IntegrityError(f"invalid layout: {exc}") from exc


def read_layout(adapter: StorageAdapter, manifest_digest: str) -> Layout:
    """The folder's layout in that store; empty when none was written (every file loose), or
    where the store holds blobs only."""
    try:
        return decode_layout(adapter.get_bytes(layout_key(manifest_digest)))
    except (ObjectNotFound, InvalidKey):
        return {}


def by_pack(layout: Layout, wanted: set[str] | None = None) -> dict[str, list[tuple[str, Packed]]]:
    """The (digest, where) of each pack's members, in offset order (``wanted`` digests only)."""
    out: dict[str, list[tuple[str, Packed]]] = {}
    for digest, where in layout.items():
        if wanted is None or digest in wanted:
            out.setdefault(where.pack, []).append((digest, where))
    for members in out.values():
        members.sort(key=lambda m: m[1].offset)
    return out


def group(sizes: list[tuple[str, int]], pack_size: int = PACK_SIZE) -> list[list[tuple[str, int]]]:
    """Split (digest, size) items, in order, into packs of about ``pack_size`` bytes."""
    groups: list[list[tuple[str, int]]] = []
    current: list[tuple[str, int]] = []
    filled = 0
    for item in sizes:
        current.append(item)
        filled += item[1]
        if filled >= pack_size:
            groups.append(current)
            current, filled = [], 0
    if current:
        groups.append(current)
    return groups
