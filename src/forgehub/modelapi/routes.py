"""The model API's routes and their OpenAPI description: DEEPaaS v2 paths, one set per module,
with each module's arguments documented as form parameters (DEEPaaS clients read them there).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from forgehub.module.args import ArgSpec
from forgehub.module.loaded import LoadedModule

if TYPE_CHECKING:
    from forgehub.modelapi.app import ModelAPI

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


def mount_routes(api: ModelAPI, app: FastAPI, prefix: str = "") -> None:
    def bind(
        fn: Callable[..., Awaitable[Response]], **fixed: Any
    ) -> Callable[..., Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            return await fn(request, **fixed, **request.path_params)

        return endpoint

    async def v2(request: Request) -> dict[str, Any]:
        href = f"{request.scope.get('root_path', '')}{prefix}/v2/"
        return {
            "version": "stable",
            "id": "v2",
            "links": [{"rel": "self", "type": "application/json", "href": href}],
        }

    async def versions(request: Request) -> dict[str, Any]:
        return {"versions": [await v2(request)]}

    async def models(request: Request) -> dict[str, Any]:
        base = request.url.path
        return {"models": [api._meta(m, f"{base}{m.name}") for m in api.modules.values()]}

    app.add_api_route(
        f"{prefix}/",
        versions,
        methods=["GET"],
        tags=["versions"],
        summary="API versions",
    )
    app.add_api_route(
        f"{prefix}/v2/",
        v2,
        methods=["GET"],
        tags=["versions"],
        summary="V2 API version information",
    )
    app.add_api_route(
        f"{prefix}/v2/models/",
        models,
        methods=["GET"],
        tags=["models"],
        summary="Loaded models and their metadata",
    )
    for m in api.modules.values():
        base = f"{prefix}/v2/models/{m.name}"

        def meta_route(m: LoadedModule) -> Callable[[Request], dict[str, Any]]:
            def meta(request: Request) -> dict[str, Any]:
                return api._meta(m, request.url.path.rstrip("/"))

            return meta

        app.add_api_route(
            f"{base}/",
            meta_route(m),
            methods=["GET"],
            tags=["models"],
            summary=f"Metadata of {m.name}",
            name=f"{m.name}:meta",
        )
        extra = _form_parameters(m.predict_specs)
        accept = m.accept_spec
        responses: dict[int | str, Any] = {
            "422": {"description": "Invalid arguments, one message per field"}
        }
        if accept and accept.enum:
            responses[200] = {
                "description": "Prediction",
                "content": {str(c): {} for c in accept.enum if c != "*/*"},
            }
        app.router.add_api_route(
            f"{base}/predict/",
            bind(api.predict, name=m.name),
            methods=["POST"],
            tags=["models"],
            name=f"{m.name}:predict",
            summary=f"Predict with {m.name}",
            openapi_extra=extra,
            responses=responses,
            route_class_override=RawRoute,
        )
        if not m.trainable:
            continue
        train_routes: list[tuple[str, str, Any, str, str, dict[str, Any] | None]] = [
            (
                "/train/",
                "POST",
                api.train_start,
                "train",
                f"Start a training of {m.name}",
                _form_parameters(m.train_specs),
            ),
            (
                "/train/",
                "GET",
                api.train_list,
                "trainings",
                "Trainings (running and finished)",
                None,
            ),
            (
                "/train/{uuid}",
                "GET",
                api.train_get,
                "training",
                "Status of a training",
                UUID_PARAM,
            ),
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
            app.router.add_api_route(
                f"{base}{path}",
                bind(handler, name=m.name),
                methods=[method],
                tags=["models"],
                name=f"{m.name}:{route_name}",
                summary=summary,
                openapi_extra=openapi,
                route_class_override=RawRoute,
            )
