"""``forgehub worker``: connect a machine to a forgehub server to run jobs."""

from forgehub.worker.agent import WorkerAgent

__all__ = ["WorkerAgent"]
