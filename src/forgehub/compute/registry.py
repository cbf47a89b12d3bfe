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
    },
    ComputeError,
)


def kinds() -> dict[str, str]:
    return REGISTRY.kinds()


def adapter_class(kind: str) -> type[ComputeAdapter]:
    cls: type[ComputeAdapter] = REGISTRY.load(kind)
    return cls
