"""Compute adapter kinds, by name. Built-ins register like plugins (entry-point group
``forgehub.compute``), and are imported only when first used."""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from forgehub.compute.base import ComputeAdapter, ComputeError

BUILTIN = {
    "local": "forgehub.compute.local:LocalCompute",
    "worker": "forgehub.compute.worker:WorkerCompute",
    "slurm": "forgehub.compute.slurm:SlurmCompute",
    "ray": "forgehub.compute.ray:RayCompute",
}


def kinds() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in entry_points(group="forgehub.compute"):
        if ep.name in found and found[ep.name] != ep.value:
            continue  # never silently replace a built-in
        found[ep.name] = ep.value
    return found


def adapter_class(kind: str) -> type[ComputeAdapter]:
    target = kinds().get(kind)
    if target is None:
        raise ComputeError(f"unknown compute kind {kind!r} (known: {', '.join(sorted(kinds()))})")
    mod, _, attr = target.partition(":")
    try:
        cls: type[ComputeAdapter] = getattr(importlib.import_module(mod), attr)
    except ImportError as exc:
        raise ComputeError(f"compute kind {kind!r} needs more packages: {exc}") from exc
    return cls
