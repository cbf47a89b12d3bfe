"""``digits-cnn``: the digits demo as a small PyTorch CNN (``pip install 'forgehub[torch]'``).

Trainable: it trains on CUDA when the job can see a GPU (``--gpu 1``: forgehub gives the job its
own through ``CUDA_VISIBLE_DEVICES``) and on the CPU otherwise, and says which in its log, its
metrics and its result. Pre-trained: ``digits-cnn-weights.pt`` ships with forgehub, made by this
module's own training (rebuild: ``python -m forgehub.demo.digits_cnn``). Predictions answer like
``digits``: top-k labels as JSON, or the annotated image as PNG.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, Field

from forgehub.demo.digits import DigitsModule, DigitsPredictArgs, load_dataset, sample_digits, split
from forgehub.module import TrainContext

WEIGHTS = Path(__file__).with_name("digits-cnn-weights.pt")
NEEDS_TORCH = "digits-cnn needs PyTorch: pip install 'forgehub[torch]'"
if importlib.util.find_spec("torch") is None:  # not installed: the module is not offered
    raise ImportError(NEEDS_TORCH)  # (PyTorch itself is imported when the module is used)


class DigitsCNNTrainArgs(BaseModel):
    epochs: int = Field(default=15, ge=1, le=500, description="Passes over the training data.")
    learning_rate: float = Field(default=0.003, gt=0, le=1, description="Adam's learning rate.")
    batch_size: int = Field(default=64, ge=1, le=8192, description="Samples per step.")
    device: Literal["auto", "cuda", "cpu"] = Field(
        default="auto", description="auto: CUDA when the job sees a GPU, else the CPU."
    )
    seed: int = Field(default=0, ge=0, description="Random seed.")


def _torch() -> Any:
    try:
        from forgehub.demo import cnn
    except ImportError as exc:
        raise RuntimeError(NEEDS_TORCH) from exc
    return cnn


class DigitsCNNModule(DigitsModule):
    name = "digits-cnn"
    metadata = {
        **DigitsModule.metadata,
        "title": "Handwritten digits (PyTorch CNN)",
        "summary": "A small convolutional network in PyTorch: trains on a GPU when it has one.",
        "description": "Two convolutions and two dense layers (about 14,000 weights) on 8×8 "
        "digits. Trains on CUDA when the job sees a GPU, else on the CPU. Upload a PNG/JPEG "
        "or send 64 pixel values.",
        "tags": ["digits", "classification", "image", "demo", "pytorch", "gpu"],
        "libraries": ["PyTorch"],
    }
    PredictArgs = DigitsPredictArgs
    TrainArgs = DigitsCNNTrainArgs  # type: ignore[assignment]  # its own training arguments

    def __init__(self, weights: Path | None = None) -> None:
        super().__init__(weights or WEIGHTS)
        self.net: Any = None

    def load(self, path: Path) -> None:
        if path.is_dir():
            path = path / WEIGHTS.name
        if not path.is_file():
            raise ValueError(f"no {WEIGHTS.name} in the trained version's weights")
        self.weights_path = path
        self.net = None

    def warm(self) -> None:
        if self.net is not None:
            return
        cnn = _torch()
        import torch

        net = cnn.make_net()
        net.load_state_dict(torch.load(self.weights_path, map_location="cpu", weights_only=True))
        self.net = net.eval()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        self.warm()
        import torch

        return np.asarray(_torch().probabilities(self.net, x, torch.device("cpu")))

    def train(self, args: DigitsCNNTrainArgs, ctx: TrainContext) -> dict[str, Any]:  # type: ignore[override]
        cnn = _torch()
        import torch

        device = cnn.pick_device(args.device)
        where = cnn.describe(device)
        print(f"training on {where}", flush=True)
        X, y = load_dataset(ctx.inputs.get("dataset"))
        X_train, X_val, y_train, y_val = split(X, y.astype(np.int64), args.seed)
        net = cnn.make_net()
        acc = 0.0

        def on_epoch(epoch: int, loss: float) -> None:
            nonlocal acc
            ctx.check_cancelled()
            acc = float((cnn.probabilities(net, X_val, device).argmax(1) == y_val).mean())
            net.train()
            ctx.log_metric("loss", loss, epoch)
            ctx.log_metric("val_accuracy", acc, epoch)
            ctx.progress(epoch / args.epochs, f"epoch {epoch}/{args.epochs} on {where}")
            print(f"epoch {epoch}/{args.epochs} loss={loss:.4f} val_accuracy={acc:.4f}", flush=True)

        cnn.fit(
            net,
            X_train,
            y_train,
            device,
            args.epochs,
            lr=args.learning_rate,
            batch=args.batch_size,
            seed=args.seed,
            on_epoch=on_epoch,
        )
        out = ctx.output_dir / WEIGHTS.name
        torch.save({k: v.cpu() for k, v in net.state_dict().items()}, out)
        return {"val_accuracy": acc, "epochs": args.epochs, "device": where, "weights": str(out)}


def _build_default_weights() -> None:
    """The shipped weights, from this module's own trainer on scikit-learn's handwritten digits
    and the drawn sample digits. ``python -m forgehub.demo.digits_cnn``."""
    import torch
    from sklearn.datasets import load_digits

    cnn = _torch()
    hand = load_digits()
    drawn_X, drawn_y = sample_digits(per_digit=200, seed=5)
    X = np.concatenate([hand.data, drawn_X])
    y = np.concatenate([hand.target, drawn_y]).astype(np.int64)
    X_train, X_val, y_train, y_val = split(X, y, seed=0)
    net = cnn.make_net()
    device = torch.device("cpu")
    cnn.fit(net, X_train, y_train, device, 30)
    torch.save(net.state_dict(), WEIGHTS)
    acc = (cnn.probabilities(net, X_val, device).argmax(1) == y_val).mean()
    print(f"wrote {WEIGHTS} (val_accuracy={acc:.3f})")


if __name__ == "__main__":
    _build_default_weights()
