"""What a transfer can raise, and its block size: light to import (no pydantic, no adapters),
so a client moving bytes straight to a store starts without the storage layer."""

from __future__ import annotations

CHUNK = 1 << 20

__all__ = [
    "CHUNK",
    "AccessDenied",
    "IntegrityError",
    "InvalidKey",
    "ObjectNotFound",
    "StorageError",
    "Unavailable",
]


class StorageError(Exception):
    """Base of storage errors; the message is safe to show (no secrets)."""


class ObjectNotFound(StorageError):
    pass


class InvalidKey(StorageError):
    pass


class AccessDenied(StorageError):
    pass


class Unavailable(StorageError):
    pass


class IntegrityError(StorageError):
    pass
