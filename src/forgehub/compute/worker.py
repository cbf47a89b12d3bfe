"""``worker``: jobs wait in the store until a connected ``forgehub worker`` claims them.

Workers only make outbound connections: they long-poll the server, hold a lease on each job they
run (renewed by the runner's heartbeats) and lose the job back to the queue if the lease lapses.
"""

from __future__ import annotations

from pydantic import Field

from forgehub.compute.base import Capacity, ComputeAdapter, ComputeConfig


class WorkerCompute(ComputeAdapter):
    kind = "worker"
    pull = True

    class Config(ComputeConfig):
        labels: list[str] = Field(
            default_factory=list,
            description="Labels a worker must have to run this connection's jobs (e.g. 'gpu').",
        )

    def test(self) -> None:
        return None  # nothing to reach: workers come to the server

    def capacity(self) -> Capacity:
        return Capacity(0.0, 0, 0, None, ["the sum of the connected workers; see /api/v1/workers"])
