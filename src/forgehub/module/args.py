"""Argument specs shared by native and DEEPaaS modules.

Both kinds of module describe their arguments differently (pydantic models, marshmallow field
dicts). Each is turned into a list of :class:`ArgSpec`, which drives request parsing, the OpenAPI
document, the CLI flags and the dashboard forms (through :meth:`ArgSpec.json_schema`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol


class ArgErrors(Exception):
    """Invalid arguments: one message per field."""

    def __init__(self, errors: dict[str, list[str]], body: Any = None) -> None:
        super().__init__("; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items()))
        self.errors = errors
        self.body = errors if body is None else body  # what the model API answers


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
    location: str | None = None  # query | form | json | headers; None: query, form or JSON
    nullable: bool = False
    untyped: bool = False  # any value (marshmallow's Field and Raw)
    item_format: str | None = None  # format of array items
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
            elif self.item_format:
                s["items"]["format"] = self.item_format
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


MISSING: Any = object()  # no value for an argument in a source
ANYWHERE = ("query", "form", "json")  # where an argument without a location is looked for, in order


class ArgSource(Protocol):
    """Raw argument values of one request (or command line), by location."""

    def get(self, location: str, name: str, multiple: bool) -> Any:
        """The value of ``name`` at ``location`` (``query``, ``form``, ``json``, ``headers``).

        With ``multiple`` (list arguments) every value given, as a list; otherwise the first one.
        :data:`MISSING` where there is none.
        """


def collect(specs: list[ArgSpec], source: ArgSource, *, lenient: bool = True) -> dict[str, Any]:
    """Gather raw values for ``specs``, the way webargs 5 (DEEPaaS's parser) does.

    An argument with a location is read there only; one without is looked for in the query, then
    the form, then a JSON body, and the first place that has it wins. A repeated scalar takes
    its first value. Values stay as given: validators convert them.

    ``lenient`` (native modules) adds forgehub's conveniences: a list or an object may arrive as
    JSON text, and an ``accept`` argument found nowhere else negotiates the ``Accept`` header.
    DEEPaaS modules get neither, as under DEEPaaS.
    """
    data: dict[str, Any] = {}
    for spec in specs:
        multiple = spec.type == "array"
        value = MISSING
        for location in (spec.location,) if spec.location else ANYWHERE:
            value = source.get(location, spec.name, multiple)
            if value is not MISSING:
                break
        if value is MISSING and lenient and spec.name == "accept":
            header = source.get("headers", "accept", False)
            if header is not MISSING and spec.enum:
                value = _match_accept(str(header), [str(c) for c in spec.enum])
                value = MISSING if value is None else value
        if value is MISSING:
            continue
        if lenient:
            value = _decode_json_text(value, spec)
        data[spec.name] = value
    return data


def _decode_json_text(value: Any, spec: ArgSpec) -> Any:
    """A list or an object sent as JSON text (``tags=["a","b"]``, ``options={"k": 1}``)."""
    if spec.type == "array" and isinstance(value, list) and len(value) == 1:
        text = value[0]
        if isinstance(text, str) and text.startswith("["):
            try:
                decoded = json.loads(text)
            except ValueError:
                return value
            return decoded if isinstance(decoded, list) else value
    if spec.type == "object" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


class FlatSource:
    """Values from a command line: every location is the same place."""

    def __init__(self, values: Mapping[str, list[Any]]) -> None:
        self.values = values

    def get(self, location: str, name: str, multiple: bool) -> Any:
        found = self.values.get(name)
        if not found:
            return MISSING
        return list(found) if multiple else found[0]


def _match_accept(header: str, choices: list[str]) -> str | None:
    for part in header.split(","):
        media = part.split(";")[0].strip()
        if media in choices:
            return media
    return None
