"""Visitors who are not signed in: what they may do (the admin's ``public_marketplace`` and
``anonymous_try``) and how often (a token bucket per address)."""

from __future__ import annotations

import threading
import time

from fastapi import HTTPException, Request

from forgehub.server.deps import CHALLENGE


class AnonymousTry:
    """Let visitors predict, ``per_minute`` times per client address (bursts up to that)."""

    def __init__(self, per_minute: int, enabled: bool) -> None:
        self.enabled = enabled
        self.rate = per_minute / 60.0
        self.burst = float(per_minute)
        self._buckets: dict[str, tuple[float, float]] = {}  # address → (tokens, when)
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> None:
        if not self.enabled:
            raise HTTPException(
                401,
                "sign in to try modules (visitors may browse the marketplace)",
                headers=CHALLENGE,
            )
        address = request.client.host if request.client else "-"
        now = time.monotonic()
        with self._lock:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            tokens, then = self._buckets.get(address, (self.burst, now))
            tokens = min(self.burst, tokens + (now - then) * self.rate)
            if tokens < 1.0:
                self._buckets[address] = (tokens, now)
                wait = max(1, int((1.0 - tokens) / self.rate) + 1)
                raise HTTPException(
                    429,
                    f"visitors may try {int(self.burst)} predictions a minute; sign in for more",
                    headers={"Retry-After": str(wait)},
                )
            self._buckets[address] = (tokens - 1.0, now)
