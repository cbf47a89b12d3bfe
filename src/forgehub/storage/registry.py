"""Storage adapter kinds, by name. Built-ins register like plugins (entry-point group
``forgehub.storage``), and are imported only when first used."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from forgehub.storage.base import AdapterConfig, StorageAdapter, StorageError

BUILTIN = {
    "local": ("forgehub.storage.local:LocalStorage", None),
    "s3": ("forgehub.storage.s3:S3Storage", "pip install 'forgehub[s3]'"),
    "webdav": ("forgehub.storage.webdav:WebDAVStorage", None),
    "blob": ("forgehub.storage.blob:BlobStorage", None),
}


class UnknownKind(StorageError):
    pass


def kinds() -> dict[str, str]:
    found = {k: v[0] for k, v in BUILTIN.items()}
    for ep in entry_points(group="forgehub.storage"):
        if ep.name in found and found[ep.name] != ep.value:
            continue  # never silently replace a built-in
        found[ep.name] = ep.value
    return found


def adapter_class(kind: str) -> type[StorageAdapter]:
    target = kinds().get(kind)
    if target is None:
        raise UnknownKind(f"unknown storage kind {kind!r} (known: {', '.join(sorted(kinds()))})")
    mod, _, attr = target.partition(":")
    try:
        cls: type[StorageAdapter] = getattr(importlib.import_module(mod), attr)
    except ImportError as exc:
        hint = BUILTIN.get(kind, (None, None))[1]
        raise UnknownKind(
            f"storage kind {kind!r} needs more packages" + (f": {hint}" if hint else f": {exc}")
        ) from exc
    return cls


def make(kind: str, config: dict[str, Any] | AdapterConfig) -> StorageAdapter:
    cls = adapter_class(kind)
    cfg = config if isinstance(config, AdapterConfig) else cls.Config.model_validate(config)
    return cls(cfg)
