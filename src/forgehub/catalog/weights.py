"""Pre-trained versions: which one a prediction uses, and its weights on this machine.

A catalogue version with weights (a training published with ``--publish``) names the weights
artifact by digest. :func:`pretrained` picks the version a caller asked for, or by default the
newest pre-trained one that is not deprecated; :class:`WeightsOnServer` brings its weights into
the server's content cache for the model API. Batch jobs get them as an input instead (see
:mod:`forgehub.jobs.submit`).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.auth import Principal
from forgehub.catalog import service
from forgehub.catalog.installed import INSTALLED
from forgehub.db import Database
from forgehub.db.models import Artifact, ArtifactLocation, CatalogModule, CatalogVersion
from forgehub.errors import NotFound
from forgehub.identity import authz

RESOLVE_TTL_S = 5.0  # how long an answer is reused (a version added elsewhere shows after it)


def is_trained(v: CatalogVersion) -> bool:
    """A version with weights of its own (not the module as installed, with its shipped ones)."""
    return v.weights_digest is not None and not v.source.startswith(INSTALLED)


@dataclass(frozen=True)
class Trained:
    """A pre-trained version and its weights artifact."""

    module: str
    version: str
    digest: str
    kind: str  # file | dir
    artifact_id: str
    filename: str | None
    source: str | None = None  # the module's code, where it is not the installed module
    environment: dict[str, Any] | None = None  # the lock the training ran with


@dataclass(frozen=True)
class Code:
    """A catalogue version whose code comes from a source (git, wheel, pip), and the lock of
    the environment it was trained in, if it was."""

    version: str
    source: str
    environment: dict[str, Any] | None


def runnable(source: str) -> bool:
    """A version's ``source`` that names code forgehub can build (not free text)."""
    from forgehub.envs.sources import SourceError, parse

    try:
        return parse(source) is not None
    except SourceError:
        return False


def lock_of(v: CatalogVersion) -> dict[str, Any] | None:
    env = (v.provenance or {}).get("environment") or {}
    lock = env.get("lock")
    return lock if isinstance(lock, dict) else None


def code_of(
    session: Session, principal: Principal | None, module: str, version: str | None
) -> Code | None:
    """The code of ``module``'s version ``version`` (else its newest live version with code);
    None where the module has none (an installed module, a metadata-only entry)."""
    m = session.scalar(select(CatalogModule).where(CatalogModule.name == module))
    if m is None or not authz.can(principal, "module.read", m):
        return None
    for v in sorted(m.versions, key=lambda v: v.created_at, reverse=True):
        if version is not None and v.version != version:
            continue
        if (version is None and v.deprecated) or not runnable(v.source):
            continue
        return Code(v.version, v.source, lock_of(v))
    return None


def pretrained(
    session: Session, principal: Principal | None, module: str, version: str | None
) -> Trained | None:
    """The version ``version`` of ``module``, or the newest pre-trained version; None where the
    module's shipped weights apply (no pre-trained version, or a version asked for that has no
    weights: the module as installed). A module the caller may not read is a 404."""
    m = session.scalar(select(CatalogModule).where(CatalogModule.name == module))
    if m is None or not authz.can(principal, "module.read", m):
        if version:
            raise NotFound(f"no module {module!r} in the catalogue")
        return None
    if version:
        v = session.scalar(
            select(CatalogVersion).where(
                CatalogVersion.module_id == m.id, CatalogVersion.version == version
            )
        )
        if v is None:
            raise NotFound(f"{module} has no version {version!r}")
        if not is_trained(v):
            return None  # the module as installed, with its shipped weights
    else:
        v = session.scalar(
            select(CatalogVersion)
            .where(
                CatalogVersion.module_id == m.id,
                CatalogVersion.weights_digest.is_not(None),
                CatalogVersion.deprecated.is_(False),
                CatalogVersion.source.not_like(f"{INSTALLED}%"),
            )
            .order_by(CatalogVersion.created_at.desc())
        )
        if v is None:
            return None
    art = session.scalar(
        select(Artifact)
        .join(ArtifactLocation, ArtifactLocation.artifact_id == Artifact.id)
        .where(Artifact.digest == v.weights_digest)
        .order_by(Artifact.created_at)
    )
    if art is None:
        raise NotFound(f"the weights of {module} {v.version} are no longer stored anywhere")
    return Trained(
        module,
        v.version,
        art.digest,
        art.kind,
        art.id,
        art.filename,
        v.source if runnable(v.source) else None,
        lock_of(v),
    )


class WeightsOnServer:
    """Resolves versions (briefly cached) and fetches weights into the server's cache."""

    def __init__(self, db: Database, box: Any, cache_root: Path) -> None:
        from forgehub.artifacts.cache import machine_cache

        self.db = db
        self.box = box
        self.cache = machine_cache(cache_root)  # the one the server's local jobs use too
        self.root = cache_root / "weights"
        self._resolved: dict[tuple[str, str, str], tuple[float, Trained | None]] = {}
        self._lock = threading.Lock()
        self._generation = service.versions_changed

    def cached(
        self, principal: Principal, module: str, version: str | None
    ) -> tuple[bool, Trained | None]:
        """``(True, answer)`` when a recent :meth:`resolve` answered this (no database)."""
        with self._lock:
            if self._generation != service.versions_changed:
                self._generation = service.versions_changed
                self._resolved.clear()
            hit = self._resolved.get((principal.user_id, module, version or ""))
        if hit is not None and time.monotonic() - hit[0] < RESOLVE_TTL_S:
            return True, hit[1]
        return False, None

    def resolve(self, principal: Principal, module: str, version: str | None) -> Trained | None:
        key = (principal.user_id, module, version or "")
        now = time.monotonic()
        with self.db.session() as s:
            found = pretrained(s, principal, module, version)
        with self._lock:
            if len(self._resolved) > 4096:
                self._resolved.clear()
            self._resolved[key] = (now, found)
        return found

    def fetch(self, trained: Trained) -> Path:
        """The weights as a local path (the cached file, or a folder of links into the cache),
        as a batch job gets them."""
        from forgehub.artifacts import connections as conns
        from forgehub.artifacts.cache import materialise
        from forgehub.db.models import StorageConnection

        with self.db.session() as s:
            loc = s.scalar(
                select(ArtifactLocation).where(ArtifactLocation.artifact_id == trained.artifact_id)
            )
            conn = s.get(StorageConnection, loc.connection_id) if loc is not None else None
            if conn is None:
                raise NotFound(f"the weights of {trained.module} {trained.version} are gone")
            adapter = conns.adapter_for(conn, self.box)
        dest = self.root / trained.digest.replace(":", "-")
        return materialise(self.cache, adapter, trained.digest, trained.kind, dest)
