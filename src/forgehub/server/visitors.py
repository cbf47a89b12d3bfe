"""Visitors who are not signed in: what they may do (the admin's ``public_marketplace`` and
``anonymous_try``) and how often (a token bucket per address: in memory, or, with several
servers, one row per address in the database, taken in one atomic statement)."""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi import HTTPException, Request

from forgehub.server.deps import CHALLENGE


class AnonymousTry:
    """Let visitors predict, ``per_minute`` times per client address (bursts up to that)."""

    def __init__(self, per_minute: int, enabled: bool, shared: Any = None) -> None:
        """``shared``: a function returning the database, when several servers share the
        limit (else each process counts its own)."""
        self.enabled = enabled
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self.shared = shared
        self._buckets: dict[str, tuple[float, float]] = {}  # address → (tokens, when)
        self._lock = threading.Lock()

    def take(self, address: str) -> float | None:
        """Take a token for ``address``: None if it got one, else the tokens it has."""
        if self.shared is not None:
            ok, tokens = take_shared(self.shared(), f"try:{address}", self.rate, self.burst)
            return None if ok else tokens
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            tokens, then = self._buckets.get(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[address] = (tokens, now)
                return tokens
            self._buckets[address] = (tokens - 1.0, now)
            return None

    def __call__(self, request: Request) -> None:
        if not self.enabled:
            raise HTTPException(
                401,
                "sign in to try modules (visitors may browse the marketplace)",
                headers=CHALLENGE,
            )
        address = request.client.host if request.client else "-"
        tokens = self.take(address)
        if tokens is not None:
            wait = max(1, int((1.0 - tokens) / self.rate) + 1)
            raise HTTPException(
                429,
                f"visitors may try {int(self.burst)} predictions a minute; sign in for more",
                headers={"Retry-After": str(wait)},
            )


def take_shared(db: Any, key: str, rate: float, burst: float) -> tuple[bool, float]:
    """One token from the bucket ``key`` in the database, refilled at ``rate`` a second up to
    ``burst``: (got one, tokens left). One statement, so servers taking at once never both
    get the last token."""
    from sqlalchemy import case, func

    from forgehub.db.models import RateBucket

    t: Any = RateBucket.__table__
    now = time.time()
    with db.session() as s:
        if s.get_bind().dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert

            least: Any = func.least
        else:
            from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]

            least = func.min
        refill = least(burst, t.c.tokens + (now - t.c.at) * rate)
        stmt = (
            insert(t)
            .values(key=key, tokens=burst - 1.0, at=now, ok=burst >= 1.0)
            .on_conflict_do_update(
                index_elements=[t.c.key],
                set_={
                    "tokens": case((refill >= 1.0, refill - 1.0), else_=refill),
                    "ok": refill >= 1.0,
                    "at": now,
                },
            )
            .returning(t.c.ok, t.c.tokens)
        )
        ok, tokens = s.execute(stmt).one()
    return bool(ok), float(tokens)
