"""Where predictions run: never on the event loop.

Uploads are written, arguments validated and ``predict`` called in one hop to a worker thread
(numpy, scikit-learn and friends release the GIL while they compute). For CPU-bound pure-Python
models, ``forgehub module serve --workers N`` runs N server processes on one socket, each of
which loads its modules and calls ``warm()`` once (see :mod:`forgehub.modelapi.factory`).
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from forgehub.module.loaded import LoadedModule, Output


class ThreadRunner:
    def __init__(self, modules: dict[str, LoadedModule]) -> None:
        self.modules = modules

    async def start(self) -> None:
        for m in self.modules.values():
            await anyio.to_thread.run_sync(m.warm)

    async def predict(self, name: str, data: dict[str, Any], uploads: Any) -> Output:
        """Write uploads, validate and predict: all in one worker-thread hop."""
        module = self.modules[name]

        def call() -> Output:
            try:
                return module.predict(module.validate_predict(uploads.materialize(data)))
            finally:
                uploads.cleanup()  # the module is done with them

        return await anyio.to_thread.run_sync(call)

    async def stop(self) -> None:
        return None
