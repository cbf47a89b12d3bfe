"""The prediction pool: results, errors, and uploads kept until a cancelled prediction ends."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from forgehub.modelapi.runner import HopPool


def test_results_errors_and_threads() -> None:
    async def main() -> None:
        pool = HopPool(2)
        names = await asyncio.gather(
            *(
                pool.run(lambda: (time.sleep(0.01), threading.current_thread().name)[1])
                for _ in range(20)
            )
        )
        assert all(n.startswith("forgehub-predict") for n in names)
        assert 1 <= len(set(names)) <= 2  # never more threads than asked for
        after: list[str] = []

        def boom() -> None:
            raise ValueError("bad input")

        with pytest.raises(ValueError, match="bad input"):
            await pool.run(boom, lambda: after.append("abandoned"))
        assert after == []  # only a request that went away leaves the clean-up to the pool
        pool.shutdown()

    asyncio.run(main())


def test_cancelled_request_keeps_files_until_the_prediction_ends() -> None:
    async def main() -> None:
        pool = HopPool(1)
        release = threading.Event()
        running = threading.Event()
        log: list[str] = []

        def slow() -> str:
            running.set()
            release.wait(5)
            log.append("predicted")
            return "ok"

        task = asyncio.create_task(pool.run(slow, lambda: log.append("cleaned")))
        while not running.is_set():
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert log == []  # the module still reads its files
        release.set()
        for _ in range(500):
            if log == ["predicted", "cleaned"]:
                break
            await asyncio.sleep(0.01)
        assert log == ["predicted", "cleaned"]
        pool.shutdown()

    asyncio.run(main())


class _Paced:
    """A stand-in module whose predictions take ``delay`` seconds, noting the thread."""

    name = "paced"

    def __init__(self) -> None:
        self.delay = 0.0
        self.threads: list[str] = []

    def validate_predict(self, data: dict) -> dict:
        return data

    def predict(self, args: dict) -> object:
        self.threads.append(threading.current_thread().name)
        time.sleep(self.delay)
        return args


def test_quick_modules_run_inline_and_a_slow_call_sends_them_back_to_threads() -> None:
    from forgehub.modelapi.runner import INLINE_AFTER, ThreadRunner

    async def main() -> None:
        module = _Paced()
        runner = ThreadRunner({"paced": module}, threads=1)  # type: ignore[dict-item]
        loop_thread = threading.current_thread().name
        for _ in range(INLINE_AFTER):
            await runner.predict("paced", {})
        assert loop_thread not in module.threads  # proving itself: in the pool
        for _ in range(10 * INLINE_AFTER):  # a call that happened to be slow delays it a little
            await runner.predict("paced", {})
            if module.threads[-1] == loop_thread:
                break
        assert module.threads[-1] == loop_thread  # quick: on the loop
        module.delay = 0.05  # now it blocks: once on the loop, then back to the pool
        await runner.predict("paced", {})
        # (on a busy machine a quick call may already have looked blocking: same outcome)
        assert runner.pace["paced"].needed >= 2 * INLINE_AFTER  # and longer to come back
        assert not runner.pace["paced"].inline
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        beat = asyncio.create_task(ticker())
        await runner.predict("paced", {})
        beat.cancel()
        assert module.threads[-1] != loop_thread
        assert ticks >= 3  # the loop kept serving meanwhile
        await runner.stop()

    asyncio.run(main())
