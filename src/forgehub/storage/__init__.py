"""Storage adapters: one streaming interface over local disk, S3, WebDAV and the blob server.

The errors are imported at once; the adapters (pydantic, the registry) when first asked for,
so that ``forgehub.storage.errors`` can be imported on its own, light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from forgehub.storage.errors import (
    AccessDenied,
    IntegrityError,
    InvalidKey,
    ObjectNotFound,
    StorageError,
    Unavailable,
)

if TYPE_CHECKING:
    from forgehub.storage.base import ObjectInfo, StorageAdapter
    from forgehub.storage.registry import adapter_class, kinds, make

_LATER = {
    "ObjectInfo": "forgehub.storage.base",
    "StorageAdapter": "forgehub.storage.base",
    "adapter_class": "forgehub.storage.registry",
    "kinds": "forgehub.storage.registry",
    "make": "forgehub.storage.registry",
}

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


def __getattr__(name: str) -> Any:
    module = _LATER.get(name)
    if module is None:
        raise AttributeError(f"module 'forgehub.storage' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # resolved once: later lookups do not come here
    return value
