"""The runner's line to the server: its calls (patient through outages) and the reporter that
sends logs and metrics in numbered batches and hears about cancels.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from forgehub.client import ApiClient, Patience, Unreachable
from forgehub.errors import Conflict, Forbidden, NotFound, Unauthorized, Upstream

log = logging.getLogger("forgehub.runner")
FLUSH_S = 0.5
BATCH_LINES = 2000
BUFFER_LINES = 100_000  # beyond this, during a long outage, the oldest lines are dropped
MAX_LINE = 16_384
PATIENCE_S = 600.0  # how long to keep trying through a server outage


class Revoked(Exception):
    """The server no longer accepts this attempt (cancelled, re-queued, or its token expired)."""


class RunnerAPI:
    """The runner's side of /api/v1/jobs/{id}/runner/*, patient through outages (the shared
    client, retrying 5xx too: every report is numbered, so sending one twice is harmless)."""

    def __init__(
        self, server: str, job_id: str, token: str, http: httpx.Client | None = None
    ) -> None:
        self.job_id = job_id
        self.base = server.rstrip("/")
        self.token = token
        # a worker shares one connection pool between its jobs
        self.api = ApiClient(self.base, token, http=http, timeout=httpx.Timeout(30.0, connect=5.0))

    def call(self, path: str, body: Any, patience_s: float = PATIENCE_S) -> Any:
        patience = Patience(patience_s, 0.2, 1.0, retry_statuses=(500, 502, 503, 504))
        try:
            return self.api.call(
                "POST", f"/api/v1/jobs/{self.job_id}/runner/{path}", json=body, patience=patience
            )
        except (Unauthorized, Forbidden, NotFound, Conflict) as exc:
            raise Revoked(str(exc)) from None
        except (Unreachable, Upstream) as exc:
            raise ConnectionError(f"server unreachable: {exc}") from None

    def close(self) -> None:
        self.api.close()


@dataclass
class Reporter:
    """Buffers log lines and metrics and sends them in numbered batches; polls for a cancel."""

    api: RunnerAPI
    cancel: threading.Event = field(default_factory=threading.Event)
    revoked: threading.Event = field(default_factory=threading.Event)
    lines: collections.deque[list[Any]] = field(
        default_factory=lambda: collections.deque(maxlen=BUFFER_LINES)
    )
    metrics: list[list[Any]] = field(default_factory=list)
    progress: float | None = None
    seq: int = 0
    dropped: int = 0
    _inflight: dict[str, Any] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _outage_logged: bool = False
    # a service gives up after this long without its server (None: wait as long as it takes)
    give_up_s: float | None = None
    _last_contact: float = field(default_factory=time.monotonic)

    def line(self, stream: str, text: str) -> None:
        with self._lock:
            if len(self.lines) == self.lines.maxlen:
                self.dropped += 1
            self.lines.append([round(time.time(), 3), stream, text[:MAX_LINE]])

    def metric(self, name: str, value: float, step: int | None, t: float) -> None:
        with self._lock:
            self.metrics.append([t, name, step, value])

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="runner-reporter")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(FLUSH_S):
            self.flush(patience_s=0.0)

    def _next_batch(self) -> dict[str, Any]:
        with self._lock:
            if self._inflight is None:
                n = min(len(self.lines), BATCH_LINES)
                lines = [self.lines.popleft() for _ in range(n)]
                metrics, self.metrics = self.metrics[:BATCH_LINES], self.metrics[BATCH_LINES:]
                if self.dropped:
                    lines.insert(0, [time.time(), "system", f"[{self.dropped} lines dropped]"])
                    self.dropped = 0
                if lines or metrics:
                    self.seq += 1
                self._inflight = {
                    "seq": self.seq,
                    "lines": lines,
                    "metrics": metrics,
                    "progress": self.progress,
                }
            return self._inflight

    def flush(self, patience_s: float, keep_last: bool = False) -> dict[str, Any] | None:
        """Send what is buffered (and a heartbeat). Keeps it if the server is away. With
        ``keep_last``, the last batch is not sent but returned (to go with the finish)."""
        while True:
            batch = self._next_batch()
            if keep_last:
                with self._lock:
                    if not (self.lines or self.metrics):
                        return batch
            try:
                reply = self.api.call("events", batch, patience_s=patience_s)
            except Revoked as exc:
                log.warning("the server stopped this attempt: %s", exc)
                self.revoked.set()
                self.cancel.set()
                return None
            except ConnectionError as exc:
                if not self._outage_logged:
                    log.warning("%s; buffering logs and retrying", exc)
                    self._outage_logged = True
                away = time.monotonic() - self._last_contact
                if self.give_up_s is not None and away > self.give_up_s:
                    self.give_up()
                return None
            self._outage_logged = False
            self._last_contact = time.monotonic()
            with self._lock:
                self._inflight = None
                more = bool(self.lines or self.metrics)
            if reply and reply.get("cancel"):
                self.cancel.set()
            if not more:
                return None

    def give_up(self) -> None:
        """Longer than a restart takes: the server is gone, and a service that nobody can
        reach or stop must not run on forever."""
        log.warning("no server for %.0f s: giving up", time.monotonic() - self._last_contact)
        self.revoked.set()
        self.cancel.set()

    def close(self, keep_last: bool = False) -> dict[str, Any] | None:
        """Stop reporting and send what is left (but the last batch, with ``keep_last``: it is
        returned, to go with the finish)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if not self.revoked.is_set():
            return self.flush(patience_s=PATIENCE_S, keep_last=keep_last)
        return None
