"""The platform server: FastAPI app factory, auth dependencies, routers."""

from __future__ import annotations

from forgehub.server.app import create_app

__all__ = ["create_app"]
