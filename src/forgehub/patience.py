"""The one retry policy for calls to forgehub's API, whatever carries them (httpx in
:class:`forgehub.client.ApiClient`, ``http.client`` in the CLI's plain calls): how long to keep
trying through transport failures and 502/503/504 (a restarting server, a balancer in front of
it). Off unless asked for, since only the caller knows whether a request may be sent twice.
Importing it loads no HTTP library."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from forgehub.errors import ForgehubError, Unreachable

T = TypeVar("T")
AWAY = (502, 503, 504)  # the server, or what is in front of it, is away for a moment


@dataclass(frozen=True)
class Patience:
    """Keep trying for ``seconds`` through transport failures and the ``retry_statuses``,
    waiting ``first_delay`` and doubling up to ``max_delay`` (0 seconds: one try). Only
    idempotent calls should retry a 500 (a runner's numbered reports do)."""

    seconds: float = 0.0
    first_delay: float = 0.2
    max_delay: float = 1.0
    retry_statuses: tuple[int, ...] = AWAY


ONCE = Patience()


def patiently(
    attempt: Callable[[], T],
    patience: Patience,
    stop: Callable[[], bool] | None = None,
    on_retry: Callable[[str, float], None] | None = None,
) -> T:
    """``attempt()`` until it returns, or raises what ``patience`` does not retry (a transport
    failure is :class:`Unreachable`; an answer, its typed error with its ``status``), or time is
    up (``stop()`` ends the waiting early; ``on_retry`` hears why and how long it waits)."""
    deadline = time.monotonic() + patience.seconds
    delay = patience.first_delay
    while True:
        try:
            return attempt()
        except ForgehubError as problem:
            if not (isinstance(problem, Unreachable) or problem.status in patience.retry_statuses):
                raise
            if time.monotonic() + delay > deadline or (stop is not None and stop()):
                raise
            if on_retry is not None:
                on_retry(str(problem), delay)
        time.sleep(delay)
        delay = min(delay * 2, patience.max_delay)
