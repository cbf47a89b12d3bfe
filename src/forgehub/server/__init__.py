"""The platform server: FastAPI app factory, auth dependencies, routers."""

from __future__ import annotations

from typing import Any

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    # the platform app is imported when asked for: the standalone model API uses this
    # package's docs and errors without the platform's routers and store
    if name == "create_app":
        from forgehub.server.app import create_app

        return create_app
    raise AttributeError(name)
