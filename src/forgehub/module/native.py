"""Native modules: pydantic argument models, ``predict(args)`` and ``train(args, ctx)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from forgehub.module.args import ArgErrors, ArgSpec
from forgehub.module.contract import Blob, FilePath, Module, Stream, TrainContext
from forgehub.module.loaded import LoadedModule, ModuleError, Output, jsonable

_TYPES = {"string", "integer", "number", "boolean", "array", "object"}


def _resolve(schema: dict[str, Any], root: dict[str, Any]) -> dict[str, Any]:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return {
            **root.get("$defs", {}).get(name, {}),
            **{k: v for k, v in schema.items() if k != "$ref"},
        }
    return schema


class NoArgs(BaseModel):
    """The arguments of a module whose ``predict`` takes none."""


def specs_from_model(model: type[BaseModel] | None) -> list[ArgSpec]:
    """ArgSpecs from a pydantic model's JSON Schema (Optional, enums and ranges included)."""
    if model is None:
        return []
    root = model.model_json_schema()
    required = set(root.get("required", []))
    specs = []
    for name, raw in root.get("properties", {}).items():
        prop = _resolve(raw, root)
        nullable = False
        if "anyOf" in prop:
            options = [_resolve(o, root) for o in prop["anyOf"]]
            nullable = any(o.get("type") == "null" for o in options)
            options = [o for o in options if o.get("type") != "null"]
            merged = {k: v for k, v in prop.items() if k != "anyOf"}
            prop = {**(options[0] if options else {}), **merged}
        typ = prop.get("type", "string")
        fmt = prop.get("format")
        items = None
        enum = prop.get("enum")
        if typ == "array":
            item = _resolve(prop.get("items", {}), root)
            items = "file" if item.get("format") == "binary" else item.get("type", "string")
            enum = item.get("enum")
        if fmt == "binary":
            typ = "file"
        if typ not in _TYPES and typ != "file":
            typ = "string"
        field = model.model_fields[name]
        has_default = not field.is_required()
        default = jsonable(field.get_default(call_default_factory=True)) if has_default else None
        specs.append(
            ArgSpec(
                name=name,
                type=typ,
                required=name in required,
                default=default,
                has_default=has_default and not (nullable and default is None),
                description=prop.get("description", ""),
                enum=enum,
                minimum=prop.get("minimum", prop.get("exclusiveMinimum")),
                maximum=prop.get("maximum", prop.get("exclusiveMaximum")),
                min_length=prop.get("minLength", prop.get("minItems")),
                max_length=prop.get("maxLength", prop.get("maxItems")),
                items=items,
                format=None if typ == "file" else fmt,
                extra={k: prop[k] for k in ("examples", "title") if k in prop},
            )
        )
    return specs


def errors_by_field(exc: ValidationError) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "args"
        out.setdefault(key, []).append(err["msg"])
    return out


class NativeModule(LoadedModule):
    kind = "native"

    def __init__(self, obj: Module, target: str, name: str | None = None) -> None:
        self.obj = obj
        self.target = target
        self.name = name or obj.name or type(obj).__name__.lower()
        self._predict_specs = specs_from_model(obj.PredictArgs)
        self._train_specs = specs_from_model(obj.TrainArgs)

    def metadata(self) -> dict[str, Any]:
        meta = dict(self.obj.metadata)
        return {
            "id": self.name,
            "name": self.name,
            "description": meta.get("summary") or meta.get("description") or "",
            "author": ", ".join(meta.get("authors", []))
            if isinstance(meta.get("authors"), list)
            else meta.get("author", ""),
            "version": str(meta.get("version", "")),
            "license": meta.get("license", ""),
            "url": (meta.get("links") or {}).get("source_code", ""),
            **{k: v for k, v in meta.items() if k in {"title", "summary", "tags", "version"}},
        }

    @property
    def predict_specs(self) -> list[ArgSpec]:
        return self._predict_specs

    @property
    def train_specs(self) -> list[ArgSpec]:
        return self._train_specs

    @property
    def trainable(self) -> bool:
        return self.obj.TrainArgs is not None and type(self.obj).train is not Module.train

    def warm(self) -> None:
        self.obj.warm()

    def load_weights(self, path: Path) -> None:
        if type(self.obj).load is Module.load:
            raise ModuleError(
                f"module {self.name!r} cannot load trained weights (it has no load(path))", 501
            )
        try:
            self.obj.load(path)
        except Exception as exc:  # noqa: BLE001 - the module's message, not a traceback
            raise ModuleError(f"cannot load the weights: {type(exc).__name__}: {exc}") from exc

    def validate_predict(self, data: dict[str, Any]) -> Any:
        try:
            return (self.obj.PredictArgs or NoArgs).model_validate(data)
        except ValidationError as exc:
            raise ArgErrors(errors_by_field(exc)) from None

    def validate_train(self, data: dict[str, Any]) -> Any:
        if self.obj.TrainArgs is None:
            raise ModuleError(f"module {self.name!r} cannot be trained", 405)
        try:
            return self.obj.TrainArgs.model_validate(data)
        except ValidationError as exc:
            raise ArgErrors(errors_by_field(exc)) from None

    def predict(self, args: Any) -> Output:
        try:
            ret = self.obj.predict(args)
        except ModuleError:
            raise
        except (ValueError, TypeError, KeyError) as exc:
            raise ModuleError(f"{type(exc).__name__}: {exc}", 400) from exc
        except Exception as exc:
            raise ModuleError(f"{type(exc).__name__}: {exc}", 500) from exc
        accept = getattr(args, "accept", None)
        return native_output(ret, accept)

    @property
    def batch_max_size(self) -> int:  # type: ignore[override]
        """What the module asks for (0: no batching unless a deployment sets a size)."""
        if not self.can_batch:
            return 0
        return max(0, int(self.obj.batch_max_size))

    @property
    def can_batch(self) -> bool:  # type: ignore[override]
        return callable(getattr(self.obj, "predict_batch", None))

    @property
    def batch_wait_ms(self) -> float:  # type: ignore[override]
        return max(0.0, float(self.obj.batch_wait_ms))

    def predict_batch(self, batch: list[Any]) -> list[Output | ModuleError]:
        try:
            results = list(self.obj.predict_batch(batch))  # type: ignore[attr-defined]
        except ModuleError:
            raise
        except Exception as exc:
            raise ModuleError(f"{type(exc).__name__}: {exc}", 500) from exc
        if len(results) != len(batch):
            raise ModuleError(
                f"predict_batch answered {len(results)} results for {len(batch)} requests", 500
            )
        out: list[Output | ModuleError] = []
        for args, ret in zip(batch, results, strict=True):
            if isinstance(ret, ModuleError):
                out.append(ret)
            elif isinstance(ret, Exception):
                status = 400 if isinstance(ret, ValueError | TypeError | KeyError) else 500
                out.append(ModuleError(f"{type(ret).__name__}: {ret}", status))
            else:
                out.append(native_output(ret, getattr(args, "accept", None)))
        return out

    def train(self, args: Any, ctx: TrainContext) -> Any:
        return jsonable(self.obj.train(args, ctx))


def native_output(ret: Any, accept: str | None) -> Output:
    if isinstance(ret, Blob):
        return Output("bytes", ret.data, ret.media_type)
    if isinstance(ret, FilePath):
        return Output("file", Path(ret.path), ret.media_type, ret.filename, ret.delete)
    if isinstance(ret, Stream):
        return Output("stream", iter(ret.chunks), ret.media_type)
    if isinstance(ret, bytes | bytearray):
        media = (
            accept
            if accept and accept not in ("application/json", "*/*")
            else "application/octet-stream"
        )
        return Output("bytes", bytes(ret), media)
    if isinstance(ret, Path):
        return Output("file", ret, "application/octet-stream", ret.name)
    return Output("json", {"status": "OK", "predictions": jsonable(ret)})
