"""Keep what a server loads at start-up out of the cyclic garbage collector's way."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

SWEEP_AFTER_S = 2.0


def _sweep() -> None:
    gc.unfreeze()
    gc.collect()
    gc.freeze()


def freeze_after_startup(app: FastAPI) -> FastAPI:
    """Once ``app`` has started, move everything alive into the GC's permanent generation.

    The modules, their libraries and the app are loaded for good by then (~190k objects for
    DEEPaaS's demo model); under load, the collector's full passes over them stopped the server
    for ~80 ms several times a second. Meant for server processes (``forgehub serve``,
    ``forgehub module serve``), not for apps started inside a test process.
    """
    started = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with started(a) as state:
            if gc.isenabled():
                gc.collect()
                gc.freeze()
            else:
                # started with the collector off (forgehub module serve): serve first, and
                # sweep what start-up left a moment later
                gc.freeze()
                gc.enable()
                asyncio.get_running_loop().call_later(SWEEP_AFTER_S, _sweep)
            yield state

    app.router.lifespan_context = lifespan
    return app
