"""Pieces shared by the adapters that speak HTTP themselves (webdav, blob)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx

from forgehub.storage.base import CHUNK, Unavailable


def range_header(start: int | None, end: int | None) -> dict[str, str]:
    """An HTTP ``Range`` header for bytes ``start``..``end`` (inclusive), or none."""
    if start is None and end is None:
        return {}
    return {"Range": f"bytes={start or 0}-{'' if end is None else end}"}


def stream_get(
    http: httpx.Client,
    url: str,
    headers: dict[str, str],
    what: str,
    server: str,
    check: Callable[[httpx.Response], None],
) -> Iterator[bytes]:
    """GET ``url`` as a stream of chunks; ``check`` turns an error status into a StorageError.

    Connection failures, before or during the body, become :class:`Unavailable`.
    """
    try:
        r = http.send(http.build_request("GET", url, headers=headers), stream=True)
    except httpx.HTTPError as exc:
        raise Unavailable(f"cannot reach {server}: {exc}") from exc
    if r.status_code >= 400:
        r.close()
        check(r)

    def gen() -> Iterator[bytes]:
        try:
            yield from r.iter_bytes(CHUNK)
        except httpx.HTTPError as exc:
            raise Unavailable(f"download of {what} broke off: {exc}") from exc
        finally:
            r.close()

    return gen()
