"""Where predictions run: never on the event loop.

Arguments are validated and ``predict`` called in one hop to a worker thread of the runner's own
pool (numpy, scikit-learn and friends release the GIL while they compute). Uploads are written
before the hop: on the loop when they are small, in the same hop otherwise (see ``Uploads``).
For CPU-bound pure-Python models, ``forgehub module serve --workers N`` runs N server processes
on one socket, each of which loads its modules and calls ``warm()`` once (see
:mod:`forgehub.modelapi.factory`).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from forgehub.module.loaded import LoadedModule, Output

T = TypeVar("T")


class ThreadRunner:
    def __init__(self, modules: dict[str, LoadedModule], threads: int | None = None) -> None:
        self.modules = modules
        self.pool = ThreadPoolExecutor(
            max_workers=threads or min(32, (os.cpu_count() or 1) + 4),
            thread_name_prefix="forgehub-predict",
        )

    async def _hop(self, fn: Callable[[], T], after: Callable[[], None] | None = None) -> T:
        """Run ``fn`` in the pool; ``after`` runs once ``fn`` has really finished.

        A cancelled request does not stop a prediction that is already running, so ``after``
        (removing the uploads) waits for it rather than pulling files from under the module.
        """
        cf: Future[T] = self.pool.submit(fn)
        try:
            return await asyncio.shield(asyncio.wrap_future(cf))
        finally:
            if after is not None:
                if cf.done():
                    after()
                else:
                    cf.add_done_callback(lambda _: after())

    async def start(self) -> None:
        for m in self.modules.values():
            await self._hop(m.warm)

    async def predict(self, name: str, data: dict[str, Any], uploads: Any) -> Output:
        """Validate and predict in one worker-thread hop; uploads are written first."""
        module = self.modules[name]
        if uploads.inline:
            data = uploads.materialize(data)
            return await self._hop(
                lambda: module.predict(module.validate_predict(data)), uploads.cleanup
            )

        def call() -> Output:
            try:
                return module.predict(module.validate_predict(uploads.materialize(data)))
            finally:
                uploads.cleanup()  # the module is done with them

        return await self._hop(call)

    async def stop(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
