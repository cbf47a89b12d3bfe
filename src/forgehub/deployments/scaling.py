"""Inference deployments: replicas that follow the load, down to zero.

Two halves share one :class:`Pool` per scaled deployment in the server process:

- the **proxy** (on the event loop) picks the ready replica with the fewest requests in flight,
  counts each request in and out, and, while no replica is ready, holds a request in a bounded
  queue until one is (it never answers an error because the deployment was scaled down);
- the **autoscaler** (:func:`autoscale`, on the dispatcher's thread, twice a second) reads those
  counts: it adds replicas at once when the requests in flight and waiting exceed ``target``
  per replica, and removes them only when the load of the whole last ``idle_s`` seconds fits in
  fewer (to ``min``, to zero). A replica that goes is drained first: no new requests, and its
  job is stopped once it has none in flight. A replica that fails is replaced.

Each second the autoscaler also samples the pool (replicas, requests per second, latency
percentiles, errors, cold starts) for the deployment's plots. Samples live in this process's
memory (the last half hour); with several servers, the autoscaler's server sends each to the
others, so that any of them can draw the plots.

With several servers, the autoscaler runs on the one holding its duty, while requests may reach
any of them: each other server reports its pools' counts over the bus a few times a second
(:meth:`Pool.report`), and the autoscaler adds the fresh reports to its own counts.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from forgehub.db.models import Deployment, DeploymentReplica, Job, JobState, utcnow
from forgehub.deployments import service

REFRESH_S = 0.5  # how old the proxy's list of ready replicas may be
REPORT_S = 0.25  # how often another server reports its counts to the autoscaler
FRESH_S = 2.0  # a report older than this no longer counts
DRAIN_S = 30.0  # a draining replica's requests get this long to finish
SAMPLE_S = 1.0
KEEP = 1800  # samples kept per deployment


class Overloaded(Exception):
    """The queue for a first replica is full, or the wait timed out."""


@dataclass
class Pool:
    """A scaled deployment as this server process sees it."""

    dep_id: str
    ready: dict[str, str] = field(default_factory=dict)  # job id → address
    in_flight: dict[str, int] = field(default_factory=dict)  # job id → requests
    waiting: int = 0
    peak: int = 0  # most requests in flight and waiting since the autoscaler last looked
    refreshed: float = 0.0
    _turn: itertools.count[int] = field(default_factory=itertools.count)
    _lock: asyncio.Lock | None = None
    # the current sample's counts
    done: int = 0
    errors: int = 0
    cold: int = 0
    latencies: list[float] = field(default_factory=list)
    series: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=KEEP))
    last_sample: float = field(default_factory=time.monotonic)
    # other servers' counts: server → (when it came, its report)
    remote: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)

    def busy(self) -> bool:
        """Anything to report: requests in flight, waiting, or done since the last report."""
        return bool(self.load() or self.peak or self.done)

    def report(self) -> dict[str, Any]:
        """This server's counts for the autoscaler on another one (and start counting anew)."""
        out = {
            "peak": self.take_peak(),
            "waiting": self.waiting,
            "in_flight": dict(self.in_flight),
            "done": self.done,
            "errors": self.errors,
            "cold": self.cold,
        }
        self.done = self.errors = self.cold = 0
        self.latencies = []
        return out

    def merge(self, server: str, report: dict[str, Any]) -> None:
        self.remote[server] = (time.monotonic(), report)

    def fresh(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        for server in [s for s, (at, _) in self.remote.items() if now - at > FRESH_S]:
            self.remote.pop(server, None)
        return [r for _, r in self.remote.values()]

    def in_flight_everywhere(self, job_id: str, fresh: list[dict[str, Any]]) -> int:
        return self.in_flight.get(job_id, 0) + sum(
            int(r.get("in_flight", {}).get(job_id, 0)) for r in fresh
        )

    def load(self) -> int:
        return sum(self.in_flight.values()) + self.waiting

    def pick(self) -> tuple[str, str] | None:
        """The ready replica with the fewest requests in flight (ties in turn)."""
        if not self.ready:
            return None
        ids = list(self.ready)
        start = next(self._turn) % len(ids)
        best = min(ids[start:] + ids[:start], key=lambda job_id: self.in_flight.get(job_id, 0))
        return best, self.ready[best]

    def begin(self, job_id: str) -> None:
        self.in_flight[job_id] = self.in_flight.get(job_id, 0) + 1
        self.peak = max(self.peak, self.load())

    def end(self, job_id: str, status: int, seconds: float, cold: bool) -> None:
        left = self.in_flight.get(job_id, 1) - 1
        if left > 0:
            self.in_flight[job_id] = left
        else:
            self.in_flight.pop(job_id, None)
        self.done += 1
        self.errors += status >= 500
        self.cold += cold
        if len(self.latencies) < 20_000:
            self.latencies.append(seconds)

    def lost(self, job_id: str) -> None:
        """A replica that refused a connection: no more requests until the store says more."""
        self.ready.pop(job_id, None)

    async def refresh(self, db: Any, force: bool = False) -> None:
        if not force and time.monotonic() - self.refreshed < REFRESH_S:
            return
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if not force and time.monotonic() - self.refreshed < REFRESH_S:
                return
            import anyio.to_thread

            self.ready = await anyio.to_thread.run_sync(_ready_replicas, db, self.dep_id)
            self.refreshed = time.monotonic()

    async def wait_for_replica(
        self, db: Any, wake: Any, limit: int, timeout: float
    ) -> tuple[str, str]:
        """Hold a request until a replica is ready (bounded: ``limit`` waiting at most)."""
        if self.waiting >= limit:
            raise Overloaded(f"{self.waiting} requests already wait for a replica; try again")
        self.waiting += 1
        self.peak = max(self.peak, self.load())
        deadline = time.monotonic() + timeout
        try:
            while True:
                if wake is not None:
                    wake()  # the autoscaler's next round now, not in half a second
                await self.refresh(db, force=True)
                chosen = self.pick()
                if chosen is not None:
                    return chosen
                if time.monotonic() > deadline:
                    raise Overloaded(f"no replica came up within {timeout:g} s")
                await asyncio.sleep(0.1)
        finally:
            self.waiting -= 1

    def take_peak(self) -> int:
        peak, self.peak = max(self.peak, self.load()), self.load()
        return peak

    def sample(self, ready: int, starting: int) -> None:
        now = time.monotonic()
        span = max(now - self.last_sample, 1e-3)
        lat = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 2) if lat else None

        self.series.append(
            {
                "t": time.time(),
                "replicas": ready,
                "starting": starting,
                "in_flight": sum(self.in_flight.values()),
                "waiting": self.waiting,
                "rps": round(self.done / span, 2),
                "p50_ms": pct(0.5),
                "p95_ms": pct(0.95),
                "p99_ms": pct(0.99),
                "errors": self.errors,
                "cold_starts": self.cold,
            }
        )
        self.done = self.errors = self.cold = 0
        self.latencies = []
        self.last_sample = now


def _ready_replicas(db: Any, dep_id: str) -> dict[str, str]:
    from sqlalchemy import select

    with db.session() as s:
        rows = s.execute(
            select(DeploymentReplica.job_id, DeploymentReplica.address, Job.state)
            .join(Job, Job.id == DeploymentReplica.job_id)
            .where(
                DeploymentReplica.deployment_id == dep_id,
                DeploymentReplica.ended_at.is_(None),
                DeploymentReplica.draining_at.is_(None),
                DeploymentReplica.address.is_not(None),
            )
            .order_by(DeploymentReplica.id)
        )
        return {
            job_id: address
            for job_id, address, state in rows
            if JobState(state) == JobState.running
        }


def pool(pools: dict[str, Pool], dep_id: str) -> Pool:
    """``dep_id``'s pool (made once: the loop and the dispatcher's thread both ask)."""
    p = pools.get(dep_id)
    return p if p is not None else pools.setdefault(dep_id, Pool(dep_id))


@dataclass
class Scaler:
    """What the autoscaler remembers of one deployment: the load it saw, second by second."""

    history: deque[tuple[float, int]] = field(default_factory=deque)


def autoscale(session: Session, d: Deployment, p: Pool, scaler: Scaler, now: float) -> None:
    """One round for ``d``: replicas up at once to the load, down after ``idle_s`` of less.
    Ray Serve scales its own: for such a deployment this only samples the plots."""
    if "ray_serve" in d.spec:
        if time.monotonic() - p.last_sample >= SAMPLE_S:
            p.sample(int(d.spec.get("serve_replicas") or 0), 0)
        return
    cfg = d.spec["scaling"]
    if d.stop_requested_at is not None or d.state not in ("starting", "running"):
        return
    fresh = p.fresh()  # what other servers' proxies see
    load = p.take_peak() + sum(int(r.get("peak", 0)) for r in fresh)
    waiting = p.waiting + sum(int(r.get("waiting", 0)) for r in fresh)
    scaler.history.append((now, load))
    while scaler.history and scaler.history[0][0] < now - cfg["idle_s"]:
        scaler.history.popleft()
    live = service.replicas(session, d)
    serving = [r for r in live if r.draining_at is None]

    def wanted(n: int) -> int:
        return max(cfg["min"], min(cfg["max"], math.ceil(n / cfg["target"])))

    up = wanted(load)
    if waiting:
        up = max(up, 1)
    if up > len(serving):
        for _ in range(up - len(serving)):
            service.add_replica(session, d)
        scaler.history.append((now, load))
    else:
        covered = now - scaler.history[0][0] >= cfg["idle_s"] - 1.0 if scaler.history else False
        down = wanted(max(n for _, n in scaler.history)) if scaler.history else len(serving)
        if covered and down < len(serving):
            # the ones not ready yet first, then the least busy
            order = sorted(
                serving,
                key=lambda r: (r.address is not None, p.in_flight_everywhere(r.job_id, fresh)),
            )
            for r in order[: len(serving) - down]:
                service.drain(session, r)
                p.lost(r.job_id)
    for r in live:
        if r.draining_at is None or r.ended_reason is not None:
            continue
        idle = p.in_flight_everywhere(r.job_id, fresh) == 0
        if idle or (utcnow() - r.draining_at).total_seconds() > DRAIN_S:
            service.end_replica(session, r, "scaled down")
    if time.monotonic() - p.last_sample >= SAMPLE_S:
        ready = sum(1 for r in live if r.address and r.draining_at is None)
        for rep in fresh:  # the other servers' requests count in the plots' rates
            p.done += int(rep.get("done", 0))
            p.errors += int(rep.get("errors", 0))
            p.cold += int(rep.get("cold", 0))
            rep["done"] = rep["errors"] = rep["cold"] = 0
        p.sample(ready, sum(1 for r in live if not r.address and r.draining_at is None))


def metrics(p: Pool | None, since: float = 0.0) -> list[dict[str, Any]]:
    return [s for s in (p.series if p is not None else []) if s["t"] > since]
