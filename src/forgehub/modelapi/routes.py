"""The model API's routes and their OpenAPI description: DEEPaaS v2 paths, one set per module,
with each module's arguments documented as form parameters (DEEPaaS clients read them there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from forgehub.modelapi.app import deepaas_error, deepaas_redirect
from forgehub.module.args import ArgSpec
from forgehub.module.loaded import LoadedModule

if TYPE_CHECKING:
    from forgehub.modelapi.app import ModelAPI

HOSTED_PREDICT = {
    "parameters": [
        {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "A catalogue module with a source (git, wheel, pip)",
        },
        {
            "name": "version",
            "in": "query",
            "required": False,
            "schema": {"type": "string"},
            "description": "A version of it [default: the newest pre-trained one]",
        },
    ],
    "requestBody": {
        "content": {
            "multipart/form-data": {"schema": {"type": "object", "additionalProperties": True}}
        }
    },
}
UUID_PARAM = {
    "parameters": [
        {
            "name": "uuid",
            "in": "path",
            "required": True,
            "schema": {"type": "string"},
            "description": "Training id",
        }
    ]
}


def _form_parameters(specs: list[ArgSpec]) -> dict[str, Any]:
    """OpenAPI for a predict/train route: query/header parameters plus a multipart body."""
    params = []
    body_props: dict[str, Any] = {}
    for s in specs:
        if s.is_file or s.items == "file":
            body_props[s.name] = s.json_schema()
            continue
        params.append(
            {
                "name": s.name,
                "in": "header" if s.location == "headers" else "query",
                "required": s.required and s.location != "headers",
                "schema": s.json_schema(),
                "description": s.description,
                **({"explode": True, "style": "form"} if s.type == "array" else {}),
            }
        )
    extra: dict[str, Any] = {"parameters": params}
    if body_props:
        extra["requestBody"] = {
            "required": any(s.required for s in specs if s.is_file),
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": body_props,
                        "required": [
                            s.name for s in specs if (s.is_file or s.items == "file") and s.required
                        ],
                    }
                }
            },
        }
    return extra


class RawRoute(APIRoute):
    """A route whose endpoint takes the request and returns the response itself.

    The OpenAPI description comes from the route's ``openapi_extra`` as usual, but requests skip
    FastAPI's dependency and body solving: the model API reads arguments from the query, form or
    body by itself (see :meth:`ModelAPI._gather`), and that machinery was a fifth of a
    prediction's time on the event loop.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return cast(Callable[[Request], Coroutine[Any, Any, Response]], self.endpoint)


def mount_routes(
    api: ModelAPI,
    app: FastAPI,
    prefix: str = "",
    native_prefix: str = "/api/v1",
    enable_train: bool = True,
    enable_predict: bool = True,
) -> None:
    def bind(
        fn: Callable[..., Awaitable[Response]], **fixed: Any
    ) -> Callable[..., Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await fn(request, **fixed, **request.path_params)

        return endpoint

    async def not_enabled(request: Request) -> Response:
        return deepaas_error(402)

    def route(path: str, endpoint: Any, methods: list[str], raw: bool = False, **kw: Any) -> None:
        if raw:
            kw["route_class_override"] = RawRoute
        # no response model: answers are written as they are (and FastAPI, asked to infer one,
        # loads pydantic.v1 to check the annotation, a tenth of the start-up)
        app.router.add_api_route(path, endpoint, methods=methods, response_model=None, **kw)

    async def v2(request: Request) -> dict[str, Any]:
        href = f"{request.scope.get('root_path', '')}{prefix}/v2/"
        return {
            "version": "stable",
            "id": "v2",
            "links": [{"rel": "self", "type": "application/json", "href": href}],
        }

    async def versions(request: Request) -> dict[str, Any]:
        root = request.scope.get("root_path", "")
        links = [{**link, "href": root + link["href"]} for link in api.links]
        return {"versions": [await v2(request)], "links": links}

    async def models(request: Request) -> dict[str, Any]:
        base = request.url.path
        return {"models": [api._meta(m, f"{base}{m.name}") for m in api.modules.values()]}

    async def debug(request: Request) -> Response:
        # DEEPaaS's debug endpoint copies the server's whole output to anyone who asks; it
        # stays off, and answers as DEEPaaS does when off
        return Response(status_code=204)

    route(f"{prefix}/", versions, ["GET"], tags=["versions"], summary="API versions")
    route(f"{prefix}/v2/", v2, ["GET"], tags=["versions"], summary="V2 API version information")
    route(f"{prefix}/v2/debug/", debug, ["GET"], tags=["debug"], include_in_schema=False)
    route(
        f"{prefix}/v2/models/",
        models,
        ["GET"],
        tags=["models"],
        summary="Loaded models and their metadata",
    )
    for m in api.modules.values():
        base = f"{prefix}/v2/models/{m.name}"

        def meta_route(m: LoadedModule) -> Callable[[Request], dict[str, Any]]:
            def meta(request: Request) -> dict[str, Any]:
                return api._meta(m, request.url.path.rstrip("/"))

            return meta

        route(f"{base}/", meta_route(m), ["GET"], tags=["models"], summary=f"Metadata of {m.name}")
        accept = m.accept_spec
        responses: dict[int | str, Any] = {
            "422": {"description": "Invalid arguments: one list of messages per argument"}
        }
        if accept and accept.enum:
            responses[200] = {
                "description": "Prediction",
                "content": {str(c): {} for c in accept.enum if c != "*/*"},
            }
        route(
            f"{base}/predict/",
            bind(api.predict, name=m.name) if enable_predict else not_enabled,
            ["POST"],
            raw=True,
            tags=["models"],
            name=f"{m.name}:predict",
            summary=f"Predict with {m.name}",
            openapi_extra=_form_parameters(m.predict_specs),
            responses=responses,
            include_in_schema=enable_predict,
        )
        train_routes: list[tuple[str, str, Any, str, str, dict[str, Any] | None]] = [
            (
                "/train/",
                "POST",
                api.train_start,
                "train",
                f"Start a training of {m.name}",
                _form_parameters(m.train_specs),
            ),
            ("/train/", "GET", api.train_list, "trainings", "Trainings (running and ended)", None),
            ("/train/{uuid}", "GET", api.train_get, "training", "A training", UUID_PARAM),
            (
                "/train/{uuid}",
                "DELETE",
                api.train_cancel,
                "cancel",
                "Cancel a training",
                UUID_PARAM,
            ),
        ]
        for path, method, handler, route_name, summary, openapi in train_routes:
            route(
                f"{base}{path}",
                bind(handler, name=m.name) if enable_train else not_enabled,
                [method],
                raw=True,
                tags=["models"],
                name=f"{m.name}:{route_name}",
                summary=summary,
                openapi_extra=openapi,
                include_in_schema=enable_train and m.trainable,
            )
        if not (enable_train and m.trainable):
            continue
        native = f"{native_prefix}/models/{m.name}/trainings"
        for path, method, handler, summary, openapi in (
            ("", "GET", api.train_list, "Trainings, with state, progress and metrics", None),
            ("/{uuid}", "GET", api.train_get, "A training: state, progress, metrics", UUID_PARAM),
            ("/{uuid}", "DELETE", api.train_cancel, "Cancel a training", UUID_PARAM),
        ):
            route(
                f"{native}{path}",
                bind(handler, name=m.name, deepaas=False),
                [method],
                raw=True,
                tags=["trainings"],
                summary=summary,
                openapi_extra=openapi,
            )
    if api.hosts_sources:
        # any other catalogue module with code (git, wheel, pip): hosted in its own environment
        route(
            f"{prefix}/v2/models/{{name}}/predict/",
            bind(api.predict) if enable_predict else not_enabled,
            ["POST"],
            raw=True,
            tags=["models"],
            name="hosted:predict",
            summary="Predict with a catalogue module from its source (run in its own environment)",
            openapi_extra=HOSTED_PREDICT,
            include_in_schema=enable_predict,
        )
    _slash_redirects(app, prefix)


def _slash_redirects(app: FastAPI, prefix: str) -> None:
    """``/v2/models`` answers 308 to ``/v2/models/``, as DEEPaaS's path normalization does."""
    methods: dict[str, set[str]] = {}
    for r in app.router.routes:
        if isinstance(r, APIRoute) and r.path.startswith(f"{prefix}/v2") and r.path.endswith("/"):
            methods.setdefault(r.path, set()).update(r.methods or ())

    async def redirect(request: Request) -> Response:
        target = request.url.path + "/"
        if request.url.query:
            target += "?" + request.url.query
        return deepaas_redirect(308, target)

    for path, allowed in sorted(methods.items()):
        # only where the request would be served: otherwise a 404 or 405, as in aiohttp
        app.router.add_route(path[:-1], redirect, methods=sorted(allowed), include_in_schema=False)
