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
