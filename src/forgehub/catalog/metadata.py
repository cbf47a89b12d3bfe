"""Catalogue metadata: the public AI4OS metadata format v2 (``ai4-metadata.yml``).

:class:`ModuleMetadata` validates a v2 document and reports every bad field at once
(:class:`MetadataError`, path and reason per field). :func:`from_v1` converts the legacy DEEP
``metadata.json`` (v1) to v2.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from forgehub.errors import Invalid

CATEGORIES = ["AI4 trainable", "AI4 inference", "AI4 pre trained", "AI4 tools"]
SHORT_CATEGORY = {
    "AI4 trainable": "trainable",
    "AI4 inference": "inference",
    "AI4 pre trained": "pre-trained",
    "AI4 tools": "tools",
}
LIBRARIES = [
    "TensorFlow",
    "PyTorch",
    "Keras",
    "Scikit-learn",
    "XGBoost",
    "LightGBM",
    "CatBoost",
    "Other",
]
DATA_TYPES = ["Image", "Text", "Time Series", "Tabular", "Graph", "Audio", "Video", "Other"]


class MetadataError(Invalid, ValueError):
    """Invalid metadata (422): ``errors`` lists every bad field with its path and the reason."""

    def __init__(self, errors: list[dict[str, str]]) -> None:
        reasons = "; ".join(f"{e['path']}: {e['reason']}" for e in errors)
        super().__init__(f"invalid metadata: {reasons}", errors=errors)


class Resources(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    cpu: int = Field(default=1, ge=1, le=1024, description="CPU cores.")
    gpu: int = Field(default=0, ge=0, le=64, description="GPUs.")
    memory_MB: int = Field(default=2000, ge=1, description="Memory, MB.")
    gpu_memory_MB: int = Field(default=0, ge=0, description="GPU memory, MB.")
    gpu_compute_capability: float = Field(default=0.0, ge=0)
    storage_MB: int = Field(default=1000, ge=0, description="Disk, MB.")


class ResourceSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    inference: Resources | None = None
    training: Resources | None = None


HTTP_URL_RE = re.compile(r"^https?://[^\s<>\"'`]+$", re.IGNORECASE)
IMAGE_RE = re.compile(
    r"^[a-z0-9][a-z0-9._/-]{0,254}(:[A-Za-z0-9_.-]{1,128})?(@sha256:[a-f0-9]{64})?$"
)


class Links(BaseModel):
    """Links of an entry. Every one is an ``http(s)`` URL (pages link to them), except
    ``docker_image``, an image reference (``org/name[:tag]``)."""

    model_config = ConfigDict(extra="allow")

    source_code: str | None = None
    documentation: str | None = None
    docker_image: str | None = None
    dataset: str | None = None
    weights: str | None = None
    citation: str | None = None
    base_model: str | None = None

    @model_validator(mode="after")
    def _safe(self) -> Links:
        for name, value in self.model_dump().items():
            if value is None:
                continue
            if not isinstance(value, str) or len(value) > 2000:
                raise ValueError(f"links.{name}: a URL of at most 2000 characters")
            if name == "docker_image":
                if not (IMAGE_RE.match(value) or HTTP_URL_RE.match(value)):
                    raise ValueError(
                        f"links.docker_image: {value[:80]!r} is not an image reference"
                    )
            elif not HTTP_URL_RE.match(value):
                raise ValueError(
                    f"links.{name}: only http(s) links are allowed, not {value[:80]!r}"
                )
        return self


class Dates(BaseModel):
    model_config = ConfigDict(extra="forbid")

    created: date | None = None
    updated: date | None = None


class ModuleMetadata(BaseModel):
    """One catalogue entry's metadata, AI4OS v2 field names."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    metadata_version: str = "2.0.0"
    title: str = Field(min_length=1, max_length=200)
    summary: str = Field(min_length=1, max_length=400)
    description: str = Field(default="", max_length=100_000, description="Markdown.")
    doi: str | None = None
    dates: Dates = Field(default_factory=Dates)
    links: Links = Field(default_factory=Links)
    tags: list[str] = Field(default_factory=list, max_length=50)
    tasks: list[str] = Field(default_factory=list)
    categories: list[Literal["AI4 trainable", "AI4 inference", "AI4 pre trained", "AI4 tools"]] = (
        Field(default_factory=list)
    )
    libraries: list[str] = Field(default_factory=list)
    data_type: list[str] = Field(default_factory=list, alias="data-type")
    resources: ResourceSet = Field(default_factory=ResourceSet)
    license: str | None = None
    authors: list[str] = Field(default_factory=list)

    @field_validator("metadata_version")
    @classmethod
    def _v2(cls, v: str) -> str:
        if not v.startswith("2."):
            raise ValueError("only metadata format 2.x is accepted; convert v1 with import")
        return v

    @field_validator("tags", "tasks", "libraries", "data_type")
    @classmethod
    def _words(cls, v: list[str]) -> list[str]:
        for item in v:
            if not item.strip() or len(item) > 64:
                raise ValueError("entries must be 1-64 characters")
        return v

    def short_categories(self) -> list[str]:
        return [SHORT_CATEGORY[c] for c in self.categories]

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def validate(doc: Any) -> ModuleMetadata:
    """Validate a v2 document; raises :class:`MetadataError` naming every bad field."""
    if not isinstance(doc, dict):
        raise MetadataError([{"path": "", "reason": "metadata must be a mapping of fields"}])
    try:
        return ModuleMetadata.model_validate(doc)
    except ValidationError as exc:
        errors = []
        for err in exc.errors():
            path = ".".join(str(p) for p in err["loc"])
            reason = err["msg"]
            if err["type"] == "extra_forbidden":
                reason = "unknown field"
            errors.append({"path": path, "reason": reason})
        raise MetadataError(errors) from None


_LIB_WORDS = {
    "tensorflow": "TensorFlow",
    "pytorch": "PyTorch",
    "torch": "PyTorch",
    "keras": "Keras",
    "scikit-learn": "Scikit-learn",
    "sklearn": "Scikit-learn",
    "xgboost": "XGBoost",
    "lightgbm": "LightGBM",
    "catboost": "CatBoost",
}
_CAT_WORDS = {
    "trainable": "AI4 trainable",
    "inference": "AI4 inference",
    "pre-trained": "AI4 pre trained",
    "pretrained": "AI4 pre trained",
}
_SKIP_WORDS = {"docker", "api-v2", "deep learning", "deep-oc"}


def from_v1(doc: dict[str, Any]) -> dict[str, Any]:
    """Convert a legacy DEEP ``metadata.json`` (v1) to a v2 document."""
    description = doc.get("description", "")
    if isinstance(description, list):
        description = "\n\n".join(str(p) for p in description)
    keywords = [str(k) for k in doc.get("keywords", [])]
    categories: list[str] = []
    libraries: list[str] = []
    tags: list[str] = []
    for word in keywords:
        low = word.lower()
        if low in _CAT_WORDS:
            if _CAT_WORDS[low] not in categories:
                categories.append(_CAT_WORDS[low])
        elif low in _LIB_WORDS:
            if _LIB_WORDS[low] not in libraries:
                libraries.append(_LIB_WORDS[low])
        elif low not in _SKIP_WORDS:
            tags.append(word)
    sources = doc.get("sources") or {}
    links = {
        "source_code": sources.get("code"),
        "docker_image": sources.get("docker_registry_repo"),
        "weights": sources.get("pre_trained_weights"),
        "dataset": doc.get("dataset_url"),
        "citation": doc.get("cite_url"),
        "documentation": doc.get("doc_url"),
    }
    out: dict[str, Any] = {
        "metadata_version": "2.0.0",
        "title": doc.get("title", ""),
        "summary": doc.get("summary", ""),
        "description": description,
        "links": {k: v for k, v in links.items() if v},
        "tags": tags,
        "tasks": [],
        "categories": categories,
        "libraries": libraries or ["Other"],
        "data-type": [],
    }
    if doc.get("license"):
        out["license"] = doc["license"]
    if doc.get("date_creation"):
        out["dates"] = {"created": doc["date_creation"]}
    return out


def load_file(path: Path) -> dict[str, Any]:
    """Read ``ai4-metadata.yml`` (v2) or ``metadata.json`` (v1 converted, or v2 as JSON)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise MetadataError([{"path": "", "reason": f"cannot read {path}: {exc}"}]) from exc
    try:
        doc = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise MetadataError([{"path": "", "reason": f"{path.name} is not valid: {exc}"}]) from exc
    if not isinstance(doc, dict):
        raise MetadataError([{"path": "", "reason": f"{path.name} is not a mapping"}])
    if not str(doc.get("metadata_version", "1")).startswith("2"):
        doc = from_v1(doc)
    return doc


def dump_yaml(meta: ModuleMetadata) -> str:
    return yaml.safe_dump(meta.dump(), sort_keys=False, allow_unicode=True)
