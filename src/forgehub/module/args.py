"""Argument specs shared by native and DEEPaaS modules.

Both kinds of module describe their arguments differently (pydantic models, marshmallow field
dicts). Each is turned into a list of :class:`ArgSpec`, which drives request parsing, the OpenAPI
document, the CLI flags and the dashboard forms (through :meth:`ArgSpec.json_schema`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ArgErrors(Exception):
    """Invalid arguments: one message per field."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors


@dataclass
class ArgSpec:
    name: str
    type: str = "string"  # string | integer | number | boolean | array | object | file
    required: bool = False
    default: Any = None
    has_default: bool = False
    description: str = ""
    enum: list[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    min_length: int | None = None
    max_length: int | None = None
    items: str | None = None  # item type of arrays
    format: str | None = None
    location: str = "query"  # query | form | headers
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_file(self) -> bool:
        return self.type == "file"

    def json_schema(self) -> dict[str, Any]:
        if self.is_file:
            s: dict[str, Any] = {"type": "string", "format": "binary"}
        else:
            s = {"type": self.type}
        if self.type == "array":
            s["items"] = {"type": self.items or "string"}
            if self.items == "file":
                s["items"] = {"type": "string", "format": "binary"}
        if self.format and not self.is_file:
            s["format"] = self.format
        if self.description:
            s["description"] = self.description
        if self.enum is not None:
            if self.type == "array":
                s["items"]["enum"] = self.enum
            else:
                s["enum"] = self.enum
        for key, val in (("minimum", self.minimum), ("maximum", self.maximum)):
            if val is not None:
                s[key] = val
        if self.min_length is not None:
            s["minItems" if self.type == "array" else "minLength"] = self.min_length
        if self.max_length is not None:
            s["maxItems" if self.type == "array" else "maxLength"] = self.max_length
        if self.has_default and self.default is not None:
            s["default"] = self.default
        s.update(self.extra)
        return s


def object_schema(specs: list[ArgSpec]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {s.name: s.json_schema() for s in specs},
        "required": [s.name for s in specs if s.required],
    }


def _coerce_scalar(value: str, typ: str) -> Any:
    """Strings from a query or form are handed over as-is; validators convert them.

    Objects arrive as JSON text and are decoded here, since no validator reads JSON text.
    """
    if typ == "object":
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def collect(
    specs: list[ArgSpec],
    getlist: Callable[[str], list[Any]],
    headers: Mapping[str, str],
) -> dict[str, Any]:
    """Gather raw values for ``specs`` from query/form/multipart (``getlist``) and headers."""
    data: dict[str, Any] = {}
    for spec in specs:
        values = getlist(spec.name)
        if not values and spec.location == "headers":
            header = headers.get(spec.name) or headers.get(spec.name.replace("_", "-"))
            if header is not None and spec.name == "accept" and spec.enum:
                # Content negotiation: the first listed media type the module offers.
                choice = _match_accept(header, [str(c) for c in spec.enum])
                values = [choice] if choice is not None else []
            elif header is not None:
                values = [header]
        if not values:
            continue
        if spec.type == "array":
            if len(values) == 1 and isinstance(values[0], str) and values[0].startswith("["):
                try:
                    decoded = json.loads(values[0])
                    if isinstance(decoded, list):
                        values = decoded
                except ValueError:
                    pass
            data[spec.name] = [
                _coerce_scalar(v, spec.items or "string") if isinstance(v, str) else v
                for v in values
            ]
        else:
            v = values[-1]
            data[spec.name] = _coerce_scalar(v, spec.type) if isinstance(v, str) else v
    return data


def _match_accept(header: str, choices: list[str]) -> str | None:
    for part in header.split(","):
        media = part.split(";")[0].strip()
        if media in choices:
            return media
    return None
