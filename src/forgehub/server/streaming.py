"""Request bodies consumed from worker threads, so disk writes stay off the event loop."""

from __future__ import annotations

from collections.abc import Iterator

import anyio.from_thread
from fastapi import Request

BATCH = 1 << 20  # bytes handed to the thread at a time: one hop per megabyte, not per packet


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request body in blocks of up to about :data:`BATCH` bytes; call it from a thread
    started by ``anyio.to_thread``. A block is gathered on the event loop (a hop between the
    loop and the thread costs more than the copy). What arrived before the client went away
    is still handed over (a resumable upload keeps it) before the error is raised."""
    stream = request.stream().__aiter__()
    ended: list[BaseException | None] = []  # [None]: the body is complete; [exc]: it broke off

    async def next_batch() -> list[bytes]:
        got: list[bytes] = []
        size = 0
        while size < BATCH:
            try:
                chunk = await stream.__anext__()
            except StopAsyncIteration:
                ended.append(None)
                break
            except Exception as exc:  # noqa: BLE001 - raised after the bytes before it
                ended.append(exc)
                break
            if chunk:
                got.append(chunk)
                size += len(chunk)
        return got

    while not ended:
        batch = anyio.from_thread.run(next_batch)
        if len(batch) == 1:
            yield batch[0]
        elif batch:
            yield b"".join(batch)
    if ended[0] is not None:
        raise ended[0]
