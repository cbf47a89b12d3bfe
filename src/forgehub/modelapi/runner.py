"""Where predictions run: never on the event loop.

:class:`ThreadRunner` runs ``predict`` in a thread pool (the default, good when the model releases
the GIL, as numpy and friends do). :class:`ProcessRunner` runs it in N processes, each of which
loads the module and calls ``warm()`` once, for CPU-bound pure-Python models.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import anyio.to_thread

from forgehub.module.loaded import LoadedModule, Output

log = logging.getLogger("forgehub.modelapi")

_WORKER_MODULES: dict[str, LoadedModule] = {}


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
            return _validate_predict(module, uploads.materialize(data))

        return await anyio.to_thread.run_sync(call)

    async def stop(self) -> None:
        return None


def _init_worker(targets: dict[str, str]) -> None:
    from forgehub.module.discovery import import_target, wrap

    for name, target in targets.items():
        module = wrap(import_target(target), target, name)
        module.warm()
        _WORKER_MODULES[name] = module
    log.info("worker %d warmed %s", os.getpid(), ", ".join(targets))


def _validate_predict(module: LoadedModule, data: dict[str, Any]) -> Output:
    return module.predict(module.validate_predict(data))


def _worker_predict(name: str, data: dict[str, Any]) -> Output:
    return _validate_predict(_WORKER_MODULES[name], data).materialize()


def _worker_pid() -> int:
    return os.getpid()


class ProcessRunner:
    def __init__(self, modules: dict[str, LoadedModule], workers: int) -> None:
        self.modules = modules
        self.workers = workers
        self.pool: ProcessPoolExecutor | None = None

    async def start(self) -> None:
        targets = {name: m.target for name, m in self.modules.items()}
        self.pool = ProcessPoolExecutor(
            max_workers=self.workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker,
            initargs=(targets,),
        )
        loop = asyncio.get_running_loop()
        # Start (and warm) every process now, not on the first requests.
        pids = await asyncio.gather(
            *(loop.run_in_executor(self.pool, _worker_pid) for _ in range(self.workers * 2))
        )
        log.info(
            "%d predict processes ready (pids %s)",
            len(set(pids)),
            ", ".join(map(str, sorted(set(pids)))),
        )

    async def predict(self, name: str, data: dict[str, Any], uploads: Any) -> Output:
        assert self.pool is not None
        data = await anyio.to_thread.run_sync(uploads.materialize, data)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.pool, _worker_predict, name, data)

    async def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
