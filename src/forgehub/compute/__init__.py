"""Compute adapters: where jobs run (the server, workers, Slurm, Ray)."""

from forgehub.compute.base import (
    BackendStatus,
    Capacity,
    ComputeAdapter,
    ComputeConfig,
    ComputeError,
    Launch,
    Resources,
)
from forgehub.compute.registry import adapter_class, kinds, kinds_with

__all__ = [
    "BackendStatus",
    "Capacity",
    "ComputeAdapter",
    "ComputeConfig",
    "ComputeError",
    "Launch",
    "Resources",
    "adapter_class",
    "kinds",
    "kinds_with",
]
