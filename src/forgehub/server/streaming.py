"""Request bodies consumed from worker threads, so disk writes stay off the event loop."""

from __future__ import annotations

from collections.abc import Iterator

import anyio.from_thread
from fastapi import Request


def body_chunks(request: Request) -> Iterator[bytes]:
    """The request body chunk by chunk; call it from a thread started by ``anyio.to_thread``."""
    stream = request.stream().__aiter__()

    async def next_chunk() -> bytes | None:
        try:
            return await stream.__anext__()
        except StopAsyncIteration:
            return None

    while (chunk := anyio.from_thread.run(next_chunk)) is not None:
        if chunk:
            yield chunk
