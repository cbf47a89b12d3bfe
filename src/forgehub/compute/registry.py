"""Compute adapter kinds, by name (entry-point group ``forgehub.compute``)."""

from __future__ import annotations

from forgehub.compute.base import ComputeAdapter, ComputeError
from forgehub.plugins import Registry

REGISTRY = Registry(
    "compute",
    "forgehub.compute",
    {
        "local": "forgehub.compute.local:LocalCompute",
        "worker": "forgehub.compute.worker:WorkerCompute",
        "slurm": "forgehub.compute.slurm:SlurmCompute",
        "ray": "forgehub.compute.ray:RayCompute",
        "sciserver": "forgehub.compute.sciserver:SciServerCompute",
    },
    ComputeError,
)


def kinds() -> dict[str, str]:
    return REGISTRY.kinds()


def adapter_class(kind: str) -> type[ComputeAdapter]:
    cls: type[ComputeAdapter] = REGISTRY.load(kind)
    return cls


def kinds_with(capability: str) -> list[str]:
    """The kinds that load here and declare ``capability`` (``pull``, ``slots_on_server``,
    ``queues_itself``): for queries that pick jobs by what their back end is."""
    found = []
    for kind in kinds():
        try:
            if getattr(adapter_class(kind), capability):
                found.append(kind)
        except ComputeError:
            continue
    return sorted(found)
