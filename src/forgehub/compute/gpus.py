"""The GPUs of this machine, and which job holds which.

:func:`detect` asks NVML (``nvidia-ml-py``) and falls back to ``nvidia-smi``; where this process
was itself given some GPUs (``CUDA_VISIBLE_DEVICES``, e.g. inside a Slurm allocation) it keeps
only those. A job is given its own devices through ``CUDA_VISIBLE_DEVICES`` (their UUIDs, which
mean the same GPU whatever the numbering); a job that asked for none gets an empty value, so it
cannot take a GPU another job holds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_mb: int

    @property
    def device(self) -> str:
        """What ``CUDA_VISIBLE_DEVICES`` names it by."""
        return self.uuid or str(self.index)

    def __str__(self) -> str:
        return f"GPU {self.index}: {self.model}, {self.memory_mb} MiB"


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def model_matches(requested: str | None, model: str) -> bool:
    """``--gpu-type A100`` matches "NVIDIA A100-SXM4-80GB" (letters and digits, any case)."""
    return not requested or _norm(requested) in _norm(model)


def _nvml() -> list[Gpu]:
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver, no library: no GPUs through NVML
        return []
    try:
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            uuid = pynvml.nvmlDeviceGetUUID(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h).total
            out.append(
                Gpu(
                    i,
                    uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name.decode() if isinstance(name, bytes) else str(name),
                    int(mem) // (1 << 20),
                )
            )
        return out
    finally:
        pynvml.nvmlShutdown()


def _nvidia_smi() -> list[Gpu]:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        r = subprocess.run(
            [exe, "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if r.returncode != 0:
        return []
    out = []
    for line in r.stdout.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 4 and parts[0].isdigit():
            mem = parts[3].split()[0] if parts[3] else "0"
            out.append(Gpu(int(parts[0]), parts[1], parts[2], int(mem) if mem.isdigit() else 0))
    return out


def detect() -> list[Gpu]:
    """This machine's GPUs, as far as this process may use them."""
    found = _nvml() or _nvidia_smi()
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is None:
        return found
    keep = [d.strip() for d in given.split(",") if d.strip()]
    return [g for d in keep for g in found if d in (str(g.index), g.uuid)]


_detected: list[Gpu] | None = None
_detect_lock = threading.Lock()


def machine_gpus() -> list[Gpu]:
    """:func:`detect`, once per process (GPUs do not come and go under a running server)."""
    global _detected
    with _detect_lock:
        if _detected is None:
            _detected = detect()
        return list(_detected)


def pick(gpus: Iterable[Gpu], busy: set[str], n: int, model: str | None) -> list[Gpu] | None:
    """``n`` free GPUs of ``model`` (any when None), or None if there are not that many."""
    free = [g for g in gpus if g.device not in busy and model_matches(model, g.model)]
    return free[:n] if len(free) >= n else None


def without(models: list[str], n: int, model: str | None) -> list[str]:
    """``models`` (of free GPUs) less the ``n`` that a job of ``model`` takes."""
    left, taken = [], 0
    for m in models:
        if taken < n and model_matches(model, m):
            taken += 1
        else:
            left.append(m)
    return left


def refusal(gpus: list[Gpu], n: int, model: str | None, where: str) -> str | None:
    """Why ``n`` GPUs of ``model`` could never be had from ``gpus``, or None."""
    if n <= 0:
        return None
    fit = [g for g in gpus if model_matches(model, g.model)]
    if len(fit) >= n:
        return None
    have = ", ".join(sorted({g.model for g in gpus})) or "none detected"
    kind = f" {model}" if model else ""
    return f"{where} has {len(fit)}{kind} GPU(s) ({have}); the job needs {n}"


class Devices:
    """Which of this machine's GPUs the jobs of one worker hold (thread-safe)."""

    def __init__(self, gpus: list[Gpu]) -> None:
        self.gpus = gpus
        self._held: dict[str, list[Gpu]] = {}
        self._lock = threading.Lock()

    def busy(self) -> set[str]:
        return {g.device for held in self._held.values() for g in held}

    def free(self) -> list[Gpu]:
        with self._lock:
            busy = self.busy()
            return [g for g in self.gpus if g.device not in busy]

    def take(self, job: str, n: int, model: str | None) -> list[Gpu] | None:
        with self._lock:
            got = pick(self.gpus, self.busy(), n, model)
            if got is not None:
                self._held[job] = got
            return got

    def give(self, job: str) -> None:
        with self._lock:
            self._held.pop(job, None)


def visible(devices: Iterable[Gpu]) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value for ``devices`` (empty: none)."""
    return ",".join(g.device for g in devices)
