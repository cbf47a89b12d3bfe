"""Storage adapters: one streaming interface over local disk, S3, WebDAV and the blob server."""

from __future__ import annotations

from forgehub.storage.base import (
    AccessDenied,
    IntegrityError,
    InvalidKey,
    ObjectInfo,
    ObjectNotFound,
    StorageAdapter,
    StorageError,
    Unavailable,
)
from forgehub.storage.registry import adapter_class, kinds, make

__all__ = [
    "AccessDenied",
    "IntegrityError",
    "InvalidKey",
    "ObjectInfo",
    "ObjectNotFound",
    "StorageAdapter",
    "StorageError",
    "Unavailable",
    "adapter_class",
    "kinds",
    "make",
]
