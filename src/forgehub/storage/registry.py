"""Storage adapter kinds, by name (entry-point group ``forgehub.storage``)."""

from __future__ import annotations

from typing import Any

from forgehub.plugins import Registry
from forgehub.storage.base import AdapterConfig, StorageAdapter, StorageError


class UnknownKind(StorageError):
    pass


REGISTRY = Registry(
    "storage",
    "forgehub.storage",
    {
        "local": "forgehub.storage.local:LocalStorage",
        "s3": "forgehub.storage.s3:S3Storage",
        "webdav": "forgehub.storage.webdav:WebDAVStorage",
        "blob": "forgehub.storage.blob:BlobStorage",
        "sciserver": "forgehub.storage.sciserver:SciServerStorage",
    },
    UnknownKind,
    {"s3": "pip install 'forgehub[s3]'"},
)


def kinds() -> dict[str, str]:
    return REGISTRY.kinds()


def adapter_class(kind: str) -> type[StorageAdapter]:
    cls: type[StorageAdapter] = REGISTRY.load(kind)
    return cls


def make(kind: str, config: dict[str, Any] | AdapterConfig) -> StorageAdapter:
    cls = adapter_class(kind)
    cfg = config if isinstance(config, AdapterConfig) else cls.Config.model_validate(config)
    return cls(cfg)
