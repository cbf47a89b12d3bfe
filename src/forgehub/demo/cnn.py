"""The small CNN behind ``digits-cnn``, with PyTorch and numpy only (no other forgehub import),
so that ``scripts/gpu-check.sh`` can time it with any Python that holds PyTorch.

Input: 8×8 grey levels scaled to 0..1, as ``(n, 1, 8, 8)``. Two 3×3 convolutions, a pooling,
two dense layers: about 14,000 weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn


def make_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 32 × 4 × 4
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 24),
        nn.ReLU(),
        nn.Linear(24, 10),
    )


def pick_device(prefer: str = "auto") -> torch.device:
    """CUDA when a GPU is visible (and not refused), else the CPU."""
    if prefer != "cpu" and torch.cuda.is_available():
        return torch.device("cuda")
    if prefer == "cuda":
        raise RuntimeError("no CUDA GPU is visible to this job (CUDA_VISIBLE_DEVICES)")
    return torch.device("cpu")


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def as_tensor(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows of 64 grey levels (0..16) as the network's input."""
    return torch.as_tensor(np.asarray(x, dtype=np.float32) / 16.0, device=device).reshape(
        -1, 1, 8, 8
    )


def fit(
    net: nn.Module,
    X: np.ndarray,
    y: np.ndarray,
    device: torch.device,
    epochs: int,
    lr: float = 0.003,
    batch: int = 64,
    seed: int = 0,
    on_epoch: Callable[[int, float], None] | None = None,
) -> float:
    """Train ``net`` in place with Adam; returns the last epoch's mean loss."""
    torch.manual_seed(seed)
    net.to(device).train()
    xs, ys = as_tensor(X, device), torch.as_tensor(np.asarray(y), device=device).long()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    loss = float("nan")
    for epoch in range(1, epochs + 1):
        order = torch.randperm(len(xs), generator=gen).to(device)
        total, n = torch.zeros((), device=device), 0
        for start in range(0, len(xs), batch):
            idx = order[start : start + batch]
            opt.zero_grad(set_to_none=True)
            out = loss_fn(net(xs[idx]), ys[idx])
            out.backward()
            opt.step()
            total += out.detach() * len(idx)
            n += len(idx)
        loss = float(total) / max(n, 1)
        if on_epoch is not None:
            on_epoch(epoch, loss)
    return loss


@torch.no_grad()
def probabilities(net: nn.Module, X: np.ndarray, device: torch.device) -> np.ndarray:
    net.to(device).eval()
    return torch.softmax(net(as_tensor(X, device)), dim=1).cpu().numpy().astype(np.float64)


def bench(
    device_name: str, samples: int = 60_000, epochs: int = 3, batch: int = 256
) -> dict[str, Any]:
    """Training samples per second on ``device_name`` (cpu or cuda), on random digits-shaped
    data: what scripts/gpu-check.sh prints. The first epoch warms up and is not counted."""
    device = torch.device(device_name)
    rng = np.random.default_rng(0)
    X = rng.uniform(0, 16, (samples, 64))
    y = rng.integers(0, 10, samples)
    net = make_net()
    fit(net, X[: batch * 4], y[: batch * 4], device, 1, batch=batch)  # warm-up (kernels, caches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(net, X, y, device, epochs, batch=batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    took = time.perf_counter() - start
    return {
        "device": describe(device),
        "samples_per_s": samples * epochs / took,
        "seconds": took,
        "batch": batch,
    }
