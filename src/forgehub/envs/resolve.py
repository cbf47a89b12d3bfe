"""Turning a module source a user wrote into exact code, on the server, before anything runs:
a git ref into its commit (where the egress policy lets the server look), a wheel artifact into
its digest (one the user may read)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from forgehub.artifacts import records
from forgehub.auth import Principal
from forgehub.db.models import Artifact
from forgehub.envs import sources
from forgehub.identity.policy import Policy


@dataclass(frozen=True)
class Exact:
    source: sources.Source
    archive: Artifact | None = None  # a wheel or sdist: the artifact the runner fetches


def exact(session: Session, principal: Principal, policy: Policy, text: str) -> Exact:
    """Raises :class:`sources.SourceError` (422) or :class:`records.NoSuchArtifact` (404)."""
    src = sources.parse(text)
    if src is None:
        raise sources.SourceError(
            f"{text[:100]!r} is not a module source: git+URL@ref, pip:REQUIREMENT or wheel:ARTIFACT"
        )
    if src.kind == "git":
        policy.check_url(principal, src.value)
        return Exact(sources.resolve(src))
    if src.kind == "wheel":
        art = records.resolve(session, principal, src.value)
        if art.kind != "file":
            raise sources.SourceError(f"{src.value!r} is a folder, not a wheel or sdist")
        name = sources.archive_name(art.filename or "")
        return Exact(sources.Source("wheel", art.digest, filename=name), art)
    return Exact(src)
