"""``/swagger.json``: the Swagger 2.0 document DEEPaaS serves, for the clients that read it.

DEEP's "try me" web UI and code generators read ``paths[…].post.parameters``, ``produces`` and
``definitions`` from it. The shapes follow what deepaas-run 2.6.0 (aiohttp-apispec) writes for
the same module: the same paths, operations, parameters (``in``, ``type``, ``format``, ``enum``,
``default``, limits), the media types a prediction may be asked for, and the same named
definitions. forgehub's own OpenAPI 3 document stays at ``/openapi.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from forgehub import __version__
from forgehub.module.args import ArgSpec

if TYPE_CHECKING:
    from forgehub.module.loaded import LoadedModule

JSON = ["application/json"]
LOCATION = {"form": "formData", "headers": "header"}


def _ref(name: str) -> dict[str, Any]:
    return {"schema": {"$ref": f"#/definitions/{name}"}, "description": ""}


def _string(description: str | None = None, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string", **extra}
    if description:
        out["description"] = description
    return out


LOCATION_DEF = {
    "type": "object",
    "properties": {"rel": _string(), "href": _string(format="url"), "type": _string()},
    "required": ["href", "rel", "type"],
}
DEFINITIONS: dict[str, Any] = {
    "Failure": {
        "type": "object",
        "properties": {"message": _string("Failure message")},
        "required": ["message"],
    },
    "Location": LOCATION_DEF,
    "Version": {
        "type": "object",
        "properties": {
            "version": _string(),
            "id": _string(),
            "links": {"$ref": "#/definitions/Location"},
            "type": _string(),
        },
        "required": ["id", "version"],
    },
    "ModelMeta": {
        "type": "object",
        "properties": {
            "id": _string("Model identifier"),
            "name": _string("Model name"),
            "description": _string("Model description"),
            "license": _string("Model license"),
            "author": _string("Model author"),
            "version": _string("Model version"),
            "url": _string("Model url"),
            "links": {"type": "array", "items": {"$ref": "#/definitions/Location"}},
        },
        "required": ["description", "id", "name"],
    },
    "Training": {
        "type": "object",
        "properties": {
            "uuid": _string("Training identifier", format="uuid"),
            "date": _string("Training start time", format="date-time"),
            "status": _string(
                "Training status", enum=["running", "error", "completed", "cancelled"]
            ),
            "message": _string("Optional message explaining status"),
        },
        "required": ["date", "status", "uuid"],
    },
    "TrainingList": {
        "type": "object",
        "properties": {"trainings": {"type": "array", "items": {"$ref": "#/definitions/Training"}}},
    },
    "Versions": {
        "type": "object",
        "properties": {"versions": {"type": "array", "items": {"$ref": "#/definitions/Version"}}},
    },
}
PREDICTION = {
    "type": "object",
    "properties": {
        "status": _string("Response status message"),
        "predictions": _string("String containing predictions"),
    },
    "required": ["predictions", "status"],
}


def parameter(spec: ArgSpec) -> dict[str, Any]:
    """One argument as a Swagger 2.0 parameter."""
    p: dict[str, Any] = {
        "in": "formData" if spec.is_file else LOCATION.get(spec.location or "", "query"),
        "name": spec.name,
        "required": spec.required,
    }
    if spec.is_file:
        p["type"] = "file"
    elif not spec.untyped:
        p["type"] = spec.type
        if spec.format:
            p["format"] = spec.format
    if spec.type == "array":
        p["collectionFormat"] = "multi"
        items: dict[str, Any] = {"type": spec.items or "string"}
        if spec.item_format:
            items["format"] = spec.item_format
        p["items"] = items
    if spec.has_default:
        p["default"] = spec.default
    if spec.nullable:
        p["x-nullable"] = True
    if spec.enum is not None:
        p["enum"] = spec.enum
    for key, value in (("minimum", spec.minimum), ("maximum", spec.maximum)):
        if value is not None:
            p[key] = value
    lengths = ("minItems", "maxItems") if spec.type == "array" else ("minLength", "maxLength")
    for key, value in zip(lengths, (spec.min_length, spec.max_length), strict=True):
        if value is not None:
            p[key] = value
    if spec.description:
        p["description"] = spec.description
    return p


def _op(summary: str, tags: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "responses": responses,
        "parameters": [],
        "tags": [tags],
        "summary": summary,
        "produces": JSON,
        **extra,
    }


def swagger_document(
    modules: list[LoadedModule],
    base_path: str = "",
    enable_train: bool = True,
    enable_predict: bool = True,
) -> dict[str, Any]:
    definitions = dict(DEFINITIONS)
    v2 = f"{base_path}/v2"
    paths: dict[str, Any] = {
        f"{v2}/": {
            "get": _op(
                "Get V2 API version information",
                "versions",
                {"400": _ref("Failure"), "200": _ref("Version")},
            )
        },
        f"{v2}/debug/": {
            "get": _op(
                "Return debug information if enabled by API.",
                "debug",
                {
                    "200": {"description": "Debug information if debug endpoint is enabled"},
                    "204": {"description": "Debug endpoint not enabled"},
                },
                description="Return debug information if enabled by API.",
                produces=["text/plain"],
            )
        },
        f"{v2}/models/": {
            "get": _op(
                "Return loaded models and its information",
                "models",
                {"200": _ref("ModelMeta")},
                description="DEEPaaS can load several models and server them on the same "
                "endpoint, making a call to the root of the models namespace will return the "
                "loaded models, as long as their basic metadata.",
            )
        },
    }
    uuid = [{"in": "path", "name": "uuid", "required": True, "type": "string"}]
    for m in modules:
        base = f"{v2}/models/{m.name}"
        paths[f"{base}/"] = {
            "get": _op("Return model's metadata", "models", {"200": _ref("ModelMeta")})
        }
        if enable_train:
            paths[f"{base}/train/"] = {
                "post": _op(
                    "Retrain model with available data",
                    "models",
                    {},
                    parameters=[parameter(s) for s in m.train_specs],
                ),
                "get": _op(
                    "Get a list of trainings (running or completed)",
                    "models",
                    {"200": _ref("TrainingList")},
                ),
            }
            paths[f"{base}/train/{{uuid}}"] = {
                "get": _op(
                    "Get status of a training",
                    "models",
                    {"200": _ref("Training")},
                    parameters=uuid,
                ),
                "delete": _op("Cancel a running training", "models", {}, parameters=uuid),
            }
        if enable_predict:
            schema = m.response_schema()
            name = "ModelPredictionResponse" if schema is not None else "Prediction"
            definitions.update(m.swagger_definitions() or {name: schema or PREDICTION})
            accept = m.accept_spec
            paths[f"{base}/predict/"] = {
                "post": _op(
                    "Make a prediction given the input data",
                    "models",
                    {"400": _ref("Failure"), "200": _ref(name)},
                    parameters=[parameter(s) for s in m.predict_specs],
                    produces=list(accept.enum) if accept and accept.enum else JSON,
                )
            }
    paths[f"{base_path}/"] = {
        "get": _op(
            "Get available API versions",
            "versions",
            {"400": _ref("Failure"), "200": _ref("Versions")},
        )
    }
    return {
        "swagger": "2.0",
        "info": {
            "title": "forgehub model API (DEEPaaS v2)",
            "version": __version__,
            "description": "Machine-learning models served by forgehub through the DEEPaaS v2 "
            "API. forgehub's OpenAPI 3 document is at /openapi.json.",
        },
        "externalDocs": {
            "description": "API documentation",
            "url": "https://deepaas.readthedocs.org/",
        },
        "paths": paths,
        "definitions": definitions,
    }
