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

import json
from dataclasses import dataclass
from typing import Any

from forgehub.storage.base import IntegrityError, InvalidKey, ObjectNotFound, StorageAdapter
from forgehub.storage.blobstore import check_digest

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


def encode_layout(layout: Layout) -> bytes:
    packs: dict[str, list[list[object]]] = {}
    for digest, where in sorted(layout.items(), key=lambda kv: (kv[1].pack, kv[1].offset)):
        packs.setdefault(where.pack, []).append([digest, where.offset, where.size])
    doc = {"forgehub.layout": 1, "packs": packs}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


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
