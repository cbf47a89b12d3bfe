"""DEEPaaS v2 modules, served unmodified.

A DEEPaaS model is a Python module of functions, a class (instantiated here) or an instance, with
``get_metadata``, ``warm``, ``predict(**kwargs)``, ``train(**kwargs)``, ``get_predict_args`` and
``get_train_args`` (webargs/marshmallow field dicts), and optionally a response ``schema``.
Arguments are validated by marshmallow itself, exactly as DEEPaaS does, so module code sees the
same values; uploads arrive as DEEPaaS's own ``UploadedFile`` when ``deepaas`` is importable.
"""

from __future__ import annotations

import copy
import inspect
import io
from pathlib import Path
from typing import Any

from forgehub.module.args import ArgErrors, ArgSpec
from forgehub.module.contract import TrainContext
from forgehub.module.loaded import JSON_TYPES, LoadedModule, ModuleError, Output, jsonable

try:  # DEEPaaS's own class, so isinstance checks in module code pass
    from deepaas.model.v2.wrapper import ReturnedFile as _ReturnedFile
    from deepaas.model.v2.wrapper import UploadedFile as DeepaasUploadedFile
except Exception:  # noqa: BLE001 - deepaas missing or broken: use a look-alike
    import collections

    DeepaasUploadedFile = collections.namedtuple(  # type: ignore[no-redef,name-match]
        "UploadedFile", ("name", "filename", "content_type", "original_filename")
    )
    _ReturnedFile = None


# webargs 5, as DEEPaaS uses it: a field's metadata (where old-style keyword arguments land too)
# may name one location; without one, the query, the form and a JSON body are tried in turn
WEBARGS_LOCATIONS = {
    "querystring": "query",
    "query": "query",
    "form": "form",
    "files": "form",
    "json": "json",
    "headers": "headers",
    "cookies": "cookies",
}


def _missing(value: Any) -> bool:
    import marshmallow

    return value is marshmallow.missing


def _field_type(field: Any) -> tuple[str, str | None]:
    """JSON type and format of a marshmallow field, as apispec (DEEPaaS's Swagger) maps them."""
    from marshmallow import fields as f

    meta = getattr(field, "metadata", {}) or {}
    if meta.get("type") == "file" or getattr(field, "type", None) == "file":
        return "file", None
    typ: str
    fmt: str | None = None
    if isinstance(field, f.List):
        typ = "array"
    elif isinstance(field, f.Bool | f.Boolean):
        typ = "boolean"
    elif isinstance(field, f.Int | f.Integer):
        typ, fmt = "integer", "int32"
    elif isinstance(field, f.Float):
        typ, fmt = "number", "float"
    elif isinstance(field, f.Number | f.Decimal):
        typ = "number"
    elif isinstance(field, f.Dict | f.Nested | f.Mapping):
        typ = "object"
    else:
        typ = "string"
        for cls, name in (
            (f.DateTime, "date-time"),
            (f.Date, "date"),
            (f.UUID, "uuid"),
            (f.Email, "email"),
            (f.Url, "url"),
        ):
            if isinstance(field, cls):
                fmt = name
                break
    return typ, meta.get("format", fmt)


def spec_from_field(name: str, field: Any) -> ArgSpec:
    from marshmallow import fields as f
    from marshmallow import validate as v

    typ, fmt = _field_type(field)
    items = item_format = None
    if typ == "array":
        inner = getattr(field, "inner", None)
        items, item_format = _field_type(inner) if inner is not None else ("string", None)
    meta = dict(getattr(field, "metadata", {}) or {})
    enum = meta.get("enum")
    minimum = maximum = min_len = max_len = None
    validators = getattr(field, "validators", []) or []
    inner = getattr(field, "inner", None)
    if inner is not None:
        validators = [*validators, *(getattr(inner, "validators", []) or [])]
    for val in validators:
        if isinstance(val, v.OneOf):
            enum = list(val.choices)
        elif isinstance(val, v.Range):
            minimum, maximum = val.min, val.max
        elif isinstance(val, v.Length):
            min_len, max_len = val.min, val.max
            if val.equal is not None:
                min_len = max_len = val.equal
    default = (
        field.load_default
        if hasattr(type(field), "load_default") or "load_default" in vars(field)
        else getattr(field, "missing", None)
    )
    has_default = not _missing(default) and not callable(default)
    description = meta.get("description") or ""
    return ArgSpec(
        name=name,
        type=typ,
        required=bool(field.required),
        default=jsonable(default) if has_default else None,
        has_default=has_default,
        description=str(description),
        enum=[jsonable(e) for e in enum] if enum is not None else None,
        minimum=minimum,
        maximum=maximum,
        min_length=min_len,
        max_length=max_len,
        items=items,
        format=fmt if typ != "file" else None,
        location=WEBARGS_LOCATIONS.get(str(meta.get("location", "")).lower()),
        nullable=bool(getattr(field, "allow_none", False)),
        untyped=type(field) in (f.Field, f.Raw) and typ != "file",
        item_format=item_format,
    )


class DeepaasModule(LoadedModule):
    kind = "deepaas"

    def __init__(self, obj: Any, target: str, name: str) -> None:
        if inspect.isclass(obj):
            obj = obj()
        self.obj = obj
        self.target = target
        self.name = name
        self._predict_fields = self._fields("get_predict_args")
        accept = self._predict_fields.get("accept")
        if accept is not None:
            # As DEEPaaS does: "*/*" is always acceptable, and the first choice is the default.
            choices = list(getattr(accept.validate, "choices", []) or [])
            if choices:
                from marshmallow import validate as v

                listed = accept.validate
                if "*/*" not in choices:
                    choices.append("*/*")
                accept.validators = [v.OneOf(choices)]
                accept.validate = accept.validators[0]
                # DEEPaaS adds "*/*" after the validator was built: its message omits it
                accept.validate.choices_text = getattr(listed, "choices_text", "")
                accept.load_default = choices[0]
        self._train_fields = self._fields("get_train_args")
        self._predict_specs = [spec_from_field(n, f) for n, f in self._predict_fields.items()]
        self._train_specs = [spec_from_field(n, f) for n, f in self._train_fields.items()]
        self._schema = self._response_schema()
        self._schema_instance = self._schema() if self._schema is not None else None
        self._loaders = {
            "predict": self._loader(self._predict_fields),
            "train": self._loader(self._train_fields),
        }

    def _fields(self, getter: str) -> dict[str, Any]:
        fn = getattr(self.obj, getter, None)
        if fn is None:
            return {}
        try:
            fields = fn() or {}
        except NotImplementedError:
            return {}
        return copy.deepcopy(dict(fields))

    def _response_schema(self) -> Any:
        import marshmallow

        schema = getattr(self.obj, "schema", None)
        if isinstance(schema, dict):
            return marshmallow.Schema.from_dict(schema, name="ModelPredictionResponse")
        if inspect.isclass(schema) and issubclass(schema, marshmallow.Schema):
            return schema
        return None

    def metadata(self) -> dict[str, Any]:
        try:
            meta = dict(self.obj.get_metadata())
        except (NotImplementedError, AttributeError):
            meta = {
                "id": "0",
                "name": self.name,
                "description": f"Could not load description from underlying model "
                f"(loaded '{self.name}')",
            }
        out: dict[str, Any] = jsonable(meta)
        return out

    @property
    def predict_specs(self) -> list[ArgSpec]:
        return self._predict_specs

    @property
    def train_specs(self) -> list[ArgSpec]:
        return self._train_specs

    @property
    def trainable(self) -> bool:
        return callable(getattr(self.obj, "train", None))

    def load_weights(self, path: Path) -> None:
        """DEEPaaS modules say in their metadata where their weights go:
        ``"weights": {"env": "NAME"}`` (forgehub sets that variable to the weights' path before
        ``warm()``). A process holds one DEEPaaS module's state: one version per process."""
        where = self.metadata().get("weights")
        env = where.get("env") if isinstance(where, dict) else None
        if not isinstance(env, str) or not env:
            raise ModuleError(
                f"module {self.name!r} does not say where its weights go (metadata "
                '"weights": {"env": "VARIABLE"})',
                501,
            )
        import os

        os.environ[env] = str(path)

    def warm(self) -> None:
        fn = getattr(self.obj, "warm", None)
        if fn is None:
            return
        try:
            fn()
        except NotImplementedError:
            pass

    @staticmethod
    def _loader(fields: dict[str, Any]) -> Any:
        """One marshmallow schema per argument set, built once (loading does not mutate it)."""
        import marshmallow

        return marshmallow.Schema.from_dict(copy.deepcopy(fields))(unknown=marshmallow.EXCLUDE)

    def _load(self, which: str, data: dict[str, Any]) -> dict[str, Any]:
        import marshmallow

        try:
            loaded: dict[str, Any] = self._loaders[which].load(data)
            return loaded
        except marshmallow.ValidationError as exc:
            messages = exc.messages if isinstance(exc.messages, dict) else {"args": exc.messages}
            raise ArgErrors(
                {
                    str(k): [str(m) for m in (v if isinstance(v, list) else [v])]
                    for k, v in messages.items()
                },
                body=jsonable(messages),  # as DEEPaaS answers: marshmallow's own, nested
            ) from None

    def validate_predict(self, data: dict[str, Any]) -> Any:
        return self._load("predict", self._to_deepaas_files(data))

    def validate_train(self, data: dict[str, Any]) -> Any:
        return self._load("train", self._to_deepaas_files(data))

    @staticmethod
    def _to_deepaas_files(data: dict[str, Any]) -> dict[str, Any]:
        def conv(v: Any) -> Any:
            if hasattr(v, "original_filename") and not isinstance(v, DeepaasUploadedFile):
                return DeepaasUploadedFile(
                    name=v.name,
                    filename=v.filename,
                    content_type=v.content_type,
                    original_filename=v.original_filename,
                )
            return v

        return {
            k: [conv(i) for i in v] if isinstance(v, list) else conv(v) for k, v in data.items()
        }

    def predict(self, args: Any) -> Output:
        import marshmallow

        try:
            ret = self.obj.predict(**args)
        except Exception as exc:
            # as under DEEPaaS: an exception that carries an HTTP status (aiohttp's) gives it,
            # any other a 500; the message goes with it
            status = getattr(exc, "status", None) or getattr(exc, "status_code", None)
            code = status if isinstance(status, int) and 400 <= status < 600 else 500
            raise ModuleError(f"{type(exc).__name__}: {exc}", code) from exc
        accept = args.get("accept", "application/json")
        if accept not in JSON_TYPES:
            if isinstance(ret, io.IOBase):
                path = Path(ret.name)  # type: ignore[attr-defined]
                ret.close()
                return Output("file", path, accept)
            if _ReturnedFile is not None and isinstance(ret, _ReturnedFile):
                return Output("file", Path(ret.filename), accept)
            if isinstance(ret, str):
                ret = ret.encode()
            return Output("bytes", bytes(ret), accept)
        if self._schema_instance is not None:
            try:
                self._schema_instance.load(ret)
            except marshmallow.ValidationError as exc:
                raise ModuleError(
                    f"the module's response does not match its schema: {exc.messages}", 500
                ) from exc
            return Output("json", jsonable(ret))
        return Output("json", {"status": "OK", "predictions": jsonable(ret)})

    def train(self, args: Any, ctx: TrainContext) -> Any:
        return jsonable(self.obj.train(**args))

    def swagger_definitions(self) -> dict[str, Any] | None:
        """The response schema as DEEPaaS's Swagger names it: ``ModelPredictionResponse`` and
        one definition per nested schema, written by apispec (installed with deepaas)."""
        if self._schema is None:
            return None
        try:
            from apispec import APISpec
            from apispec.ext.marshmallow import MarshmallowPlugin
        except ImportError:
            return None
        spec = APISpec(self.name, "0", "2.0", plugins=[MarshmallowPlugin()])
        spec.components.schema("ModelPredictionResponse", schema=self._schema)
        definitions: dict[str, Any] = spec.to_dict().get("definitions", {})
        return definitions

    def response_schema(self) -> dict[str, Any] | None:
        if self._schema is None:
            return None
        specs = [spec_from_field(n, f) for n, f in self._schema().fields.items()]
        from forgehub.module.args import object_schema

        return object_schema(specs)
