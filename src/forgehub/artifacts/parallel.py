"""How many objects move at once, and how their results are gathered: shared by the server's
transfers and the client's direct ones, light to import."""

from __future__ import annotations

from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")
WORKERS = 16  # objects in flight at once: a store's round trip, not its bandwidth, is the limit


def results(futures: list[Future[T]]) -> list[T]:
    """Each future's result; the first failure is raised once the others are done (a cancel
    raised from ``progress`` ends them all quickly)."""
    out, failure = [], None
    for f in futures:
        try:
            out.append(f.result())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failure = failure or exc
    if failure is not None:
        raise failure
    return out
