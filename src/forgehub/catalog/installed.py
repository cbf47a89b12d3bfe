"""Installed modules register themselves in the catalogue at start-up."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from forgehub.catalog.metadata import MetadataError, ModuleMetadata, load_file, validate
from forgehub.catalog.service import add_version, save_module
from forgehub.db.models import CatalogModule, Role, User
from forgehub.module.args import object_schema
from forgehub.module.loaded import LoadedModule

log = logging.getLogger("forgehub.catalog")
_KNOWN = set(ModuleMetadata.model_fields) | {"data-type"}


def shipped_metadata_file(target: str) -> Path | None:
    """An ``ai4-metadata.yml`` (or ``metadata.json``) shipped in the module's package."""
    top = target.split(":")[0].split(".")[0]
    spec = importlib.util.find_spec(top)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for folder in (Path(location), Path(location).parent):
            for name in ("ai4-metadata.yml", "ai4-metadata.yaml", "metadata.json"):
                if (folder / name).is_file():
                    return folder / name
    return None


def metadata_of(m: LoadedModule) -> ModuleMetadata:
    """The module's catalogue metadata: a shipped file, else what the module declares."""
    path = shipped_metadata_file(m.target)
    if path is not None:
        try:
            return validate(load_file(path))
        except MetadataError as exc:
            log.warning("ignoring %s of module %s: %s", path, m.name, exc)
    declared: dict[str, Any] = (
        dict(getattr(getattr(m, "obj", None), "metadata", {}) or {}) if m.kind == "native" else {}
    )
    deepaas = m.metadata()
    description = str(declared.get("description") or deepaas.get("description") or "")
    doc: dict[str, Any] = {k: v for k, v in declared.items() if k in _KNOWN}
    doc.setdefault("title", declared.get("title") or m.name)
    doc.setdefault(
        "summary", (declared.get("summary") or description.split(". ")[0] or m.name)[:400]
    )
    doc.setdefault("description", description)
    if not doc.get("categories"):
        doc["categories"] = ["AI4 inference"] + (["AI4 trainable"] if m.trainable else [])
    if deepaas.get("license") and "license" not in doc:
        doc["license"] = str(deepaas["license"])
    if deepaas.get("author") and "authors" not in doc:
        doc["authors"] = [str(deepaas["author"])]
    if deepaas.get("url"):
        doc.setdefault("links", {}).setdefault("source_code", str(deepaas["url"]))
    try:
        return validate(doc)
    except MetadataError as exc:
        log.warning("module %s declares invalid metadata (%s); using the basics", m.name, exc)
        return ModuleMetadata(title=m.name, summary=m.name, categories=doc["categories"])


def weights_digest(m: LoadedModule) -> str | None:
    """``sha256:<hex>`` of the weights a pre-trained native module ships, if any."""
    path = getattr(getattr(m, "obj", None), "weights_path", None)
    if not isinstance(path, Path) or not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()}"


INSTALLED = "python: "  # the source of a version that is the module as installed


def register_installed(session: Session, modules: list[LoadedModule]) -> int:
    """Create or refresh the entries of installed modules; returns how many."""
    admin = session.scalar(select(User).where(User.role == Role.admin).order_by(User.created_at))
    count = 0
    for m in modules:
        existing = session.scalar(select(CatalogModule).where(CatalogModule.name == m.name))
        if existing is not None and existing.source != "installed":
            continue  # somebody published this name by hand: theirs wins
        try:
            meta = metadata_of(m)
            entry = save_module(
                session, m.name, meta, admin.id if admin else None, "installed", existing=existing
            )
            version = str(m.metadata().get("version") or "0.0.0")
            add_version(
                session,
                entry,
                version,
                source=f"{INSTALLED}{m.target}",
                predict_schema=object_schema(m.predict_specs),
                train_schema=object_schema(m.train_specs) if m.trainable else None,
                weights_digest=weights_digest(m),
                replace=True,
            )
            count += 1
        except (ValidationError, ValueError) as exc:
            log.error("cannot register module %s in the catalogue: %s", m.name, exc)
    return count
