"""Where predictions run: off the event loop, unless a module has proved quick.

Arguments are validated and ``predict`` called in one hop to a worker thread of the runner's own
pool (numpy, scikit-learn and friends release the GIL while they compute). Uploaded files are
already on disk by then (see :mod:`forgehub.modelapi.multipart`).
A module that has proved quick runs on the event loop instead (see :class:`ThreadRunner`).
For CPU-bound pure-Python models, ``forgehub module serve --workers N`` runs N server processes
on one socket, each of which loads its modules and calls ``warm()`` once (see
:mod:`forgehub.modelapi.factory`).

Waking a thread and waking the loop back are the dear part of a hop (tens of microseconds each
on a virtual machine, more than most predictions), so the pool is built to skip them under load:
a busy worker takes the next job without being woken, and results go back to the loop in batches
with one wake-up for all of them.
"""

from __future__ import annotations

import asyncio
import os
import resource
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from forgehub.module.loaded import LoadedModule, Output

T = TypeVar("T")


class _Job(Generic[T]):
    __slots__ = ("fn", "fut", "abandoned", "ok", "value")

    def __init__(
        self, fn: Callable[[], T], fut: asyncio.Future[T], abandoned: Callable[[], None] | None
    ) -> None:
        self.fn = fn
        self.fut = fut
        self.abandoned = abandoned
        self.ok = False
        self.value: Any = None


class HopPool:
    """Worker threads fed from one queue, handing results back to one event loop in batches."""

    def __init__(self, threads: int, name: str = "forgehub-predict") -> None:
        self.max_threads = max(1, threads)
        self.name = name
        self._jobs: deque[_Job[Any]] = deque()
        self._done: deque[_Job[Any]] = deque()
        self._cv = threading.Condition(threading.Lock())
        self._idle = 0
        self._threads: list[threading.Thread] = []
        self._posted = False
        self._wake_scheduled = False
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def run(self, fn: Callable[[], T], abandoned: Callable[[], None] | None = None) -> T:
        """``fn()`` in a worker thread.

        A cancelled request (a client gone) does not stop a prediction that is already running:
        ``abandoned()`` (removing the uploads) runs on the loop once ``fn`` has really finished,
        rather than pulling files from under the module. Otherwise the caller cleans up.
        """
        loop = self._loop = asyncio.get_running_loop()  # one loop at a time (an app's lifespan)
        if self._closed:
            raise RuntimeError("the prediction pool is shut down")
        job: _Job[T] = _Job(fn, loop.create_future(), abandoned)
        self._jobs.append(job)
        if not self._wake_scheduled:
            # wake workers once for all the jobs this turn of the loop submits
            self._wake_scheduled = True
            loop.call_soon(self._wake)
        return await job.fut  # cancelled: the job may still run, and _deliver calls abandoned

    def _wake(self) -> None:
        self._wake_scheduled = False
        with self._cv:
            waiting = len(self._jobs)
            if not waiting:
                return
            if self._idle:
                self._cv.notify(min(waiting, self._idle))
            elif len(self._threads) < self.max_threads:
                t = threading.Thread(
                    target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
                )
                self._threads.append(t)
                t.start()

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._jobs:
                    if self._closed:
                        return
                    self._idle += 1
                    self._cv.wait()
                    self._idle -= 1
                job = self._jobs.popleft()
            try:
                job.value = job.fn()
                job.ok = True
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting request
                job.value = exc
            self._done.append(job)
            if not self._posted:
                self._posted = True
                assert self._loop is not None
                try:
                    self._loop.call_soon_threadsafe(self._deliver)
                except RuntimeError:  # the loop is closed: nobody waits any more
                    return

    def _deliver(self) -> None:
        self._posted = False
        while self._done:
            job = self._done.popleft()
            if job.fut.cancelled():
                if job.abandoned is not None:
                    job.abandoned()
            elif job.ok:
                job.fut.set_result(job.value)
            else:
                job.fut.set_exception(job.value)

    def shutdown(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()


INLINE_S = 0.0005  # a prediction quicker than this costs less than the hop to a thread
BLOCKED_S = 0.005  # a prediction on the loop that takes this long was blocking it
INLINE_AFTER = 32  # quick predictions (net of slow ones) before a module runs on the loop
MOST_AFTER = INLINE_AFTER << 12


def _waits() -> int:
    """Voluntary context switches of this thread so far (-1 where the system cannot say, which
    makes every long call count as a wait)."""
    try:
        return resource.getrusage(RUSAGE_THREAD).ru_nvcsw
    except (OSError, ValueError):
        return -1


RUSAGE_THREAD = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


class _Pace:
    """How a module's recent predictions went: a score of ``quick`` ones (a slow one halves it),
    and the score ``needed`` to run on the loop."""

    __slots__ = ("quick", "needed")

    def __init__(self) -> None:
        self.quick = 0
        self.needed = INLINE_AFTER

    @property
    def inline(self) -> bool:
        return self.quick >= self.needed


class ThreadRunner:
    """Runs predictions in a :class:`HopPool`, except where a module has shown it is quick.

    Handing a prediction to a thread and its result back costs tens of microseconds and two
    wake-ups; once a module's predictions have each used under :data:`INLINE_S` of CPU, about
    :data:`INLINE_AFTER` times (a slower one halves the count), the next run on the event loop
    instead: a few times the throughput at low concurrency. In a thread, CPU time is what counts
    (wall time there is mostly waiting for the interpreter while the loop is busy). On the loop,
    one call that holds it :data:`BLOCKED_S` or more and waited meanwhile (a voluntary context
    switch: I/O, a sleep, a lock; not mere preemption on a busy machine) sends the module back
    to the threads, and it must then prove quick twice as long before it comes
    back: a model that can block holds the loop a handful of times in all.
    """

    def __init__(
        self,
        modules: dict[str, LoadedModule],
        threads: int | None = None,
        batch: tuple[int | None, float | None] = (None, None),
    ) -> None:
        self.modules = modules
        self.pool = HopPool(threads or os.cpu_count() or 1)
        self.pace = {name: _Pace() for name in modules}
        self.batch = batch  # (max size, wait in ms) a deployment sets over the module's own
        self.batchers: dict[int, Batcher] = {}  # id(module) → its batcher

    async def start(self) -> None:
        for m in self.modules.values():
            await self.pool.run(m.warm)

    def _in_thread(self, module: LoadedModule, pace: _Pace, data: dict[str, Any]) -> Output:
        started = time.thread_time()
        out = module.predict(module.validate_predict(data))
        if time.thread_time() - started < INLINE_S:
            pace.quick += 1
        else:
            pace.quick //= 2
        return out

    def _inline(self, module: LoadedModule, pace: _Pace, data: dict[str, Any]) -> Output:
        started, waits = time.perf_counter(), _waits()
        try:
            return module.predict(module.validate_predict(data))
        finally:
            # long, and it waited (a voluntary switch: I/O, a sleep, a lock), not merely
            # preempted by another process on a busy machine
            if time.perf_counter() - started >= BLOCKED_S and (waits < 0 or _waits() != waits):
                pace.quick = 0
                pace.needed = min(pace.needed * 2, MOST_AFTER)

    async def predict(
        self,
        name: str,
        data: dict[str, Any],
        abandoned: Callable[[], None] | None = None,
        module: LoadedModule | None = None,
    ) -> Output:
        """Validate and predict: inline for a module that has been quick, otherwise in one
        worker-thread hop (see :meth:`HopPool.run` for ``abandoned``). ``module`` is another
        instance of module ``name`` (one with a pre-trained version's weights)."""
        m = module or self.modules[name]
        can_batch = getattr(m, "can_batch", False)
        size = (m.batch_max_size if self.batch[0] is None else self.batch[0]) if can_batch else 0
        if size:
            batcher = self.batchers.get(id(m))
            if batcher is None:
                wait = m.batch_wait_ms if self.batch[1] is None else self.batch[1]
                batcher = self.batchers[id(m)] = Batcher(m, self.pool, size, wait)
            return await batcher.predict(data, abandoned)
        if getattr(m, "upload_dir", None) is not None:  # in another process: a call waits
            return await self.pool.run(lambda: m.predict(m.validate_predict(data)), abandoned)
        module, pace = m, self.pace[name]
        if pace.inline:
            return self._inline(module, pace, data)
        return await self.pool.run(lambda: self._in_thread(module, pace, data), abandoned)

    async def stop(self) -> None:
        self.pool.shutdown()


class Batcher:
    """Adaptive batching for a module with ``predict_batch``: the first request of a batch
    waits at most ``wait_ms`` for others, up to ``max_size`` in all, and the batch runs in one
    hop to a worker thread. Under no load a request waits ``wait_ms`` at most; under load
    batches fill up and the wait is not spent. Each request is validated on its own: a bad one
    gets its own error and the rest of its batch is answered."""

    def __init__(self, module: LoadedModule, pool: HopPool, max_size: int, wait_ms: float) -> None:
        self.module = module
        self.pool = pool
        self.max_size = max(1, max_size)
        self.wait_s = max(0.0, wait_ms) / 1000
        self._pending: list[tuple[dict[str, Any], asyncio.Future[Output]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self.sizes: deque[int] = deque(maxlen=1000)  # the last batches' sizes

    async def predict(self, data: dict[str, Any], abandoned: Callable[[], None] | None) -> Output:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Output] = loop.create_future()
        self._pending.append((data, fut))
        if len(self._pending) >= self.max_size:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.wait_s, self._flush)
        try:
            return await asyncio.shield(fut)
        except asyncio.CancelledError:
            if abandoned is not None:  # the client went: clean up once its batch is done
                fut.add_done_callback(lambda _f: abandoned())
            raise

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending = self._pending, []
        if batch:
            self.sizes.append(len(batch))
            asyncio.ensure_future(self._run(batch))

    async def _run(self, batch: list[tuple[dict[str, Any], asyncio.Future[Output]]]) -> None:
        try:
            results = await self.pool.run(lambda: self._in_thread([d for d, _ in batch]))
        except BaseException as exc:  # noqa: BLE001 - every request of the batch hears it
            results = [exc] * len(batch)
        for (_, fut), result in zip(batch, results, strict=True):
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                result.batch = len(batch)
                fut.set_result(result)

    def _in_thread(self, datas: list[dict[str, Any]]) -> list[Output | BaseException]:
        out: list[Output | BaseException] = [None] * len(datas)  # type: ignore[list-item]
        valid, where = [], []
        for i, data in enumerate(datas):
            try:
                valid.append(self.module.validate_predict(data))
                where.append(i)
            except Exception as exc:  # noqa: BLE001 - that request's own error
                out[i] = exc
        if valid:
            for i, result in zip(where, self.module.predict_batch(valid), strict=True):
                out[i] = result
        return out
