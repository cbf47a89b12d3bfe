"""``digits``: a small neural network that reads 8×8 handwritten digits.

Trainable (scikit-learn's MLP, one metric point per epoch), pre-trained (``digits-weights.npz``
ships with forgehub and was produced by this module's own ``train``; rebuild it with
``python -m forgehub.demo.digits``), and ready for inference: upload a PNG/JPEG or send 64 pixel
values, get the top-k labels with probabilities as JSON or an annotated PNG.

Weights are stored as plain arrays, and inference is a numpy forward pass, so they do not depend
on the scikit-learn version.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from forgehub.module import Blob, File, Module, TrainContext

WEIGHTS = Path(__file__).with_name("digits-weights.npz")


class DigitsPredictArgs(BaseModel):
    image: File | None = Field(default=None, description="A PNG or JPEG image of one digit.")
    pixels: list[Annotated[float, Field(ge=0, le=16, allow_inf_nan=False)]] | None = Field(
        default=None,
        min_length=64,
        max_length=64,
        description="Instead of an image: 64 grey levels (0 = background, 16 = ink), row by row.",
        examples=[[0.0] * 64],
    )
    top_k: int = Field(default=3, ge=1, le=10, description="How many labels to return.")
    accept: Literal["application/json", "image/png"] = Field(
        default="application/json", description="JSON labels, or the image annotated as PNG."
    )

    @model_validator(mode="after")
    def _one_input(self) -> DigitsPredictArgs:
        if (self.image is None) == (self.pixels is None):
            raise ValueError("give exactly one of 'image' or 'pixels'")
        return self


class DigitsTrainArgs(BaseModel):
    epochs: int = Field(default=30, ge=1, le=500, description="Passes over the training data.")
    hidden_size: int = Field(default=64, ge=4, le=1024, description="Neurons in the hidden layer.")
    learning_rate: float = Field(default=0.01, gt=0, le=1, description="Initial learning rate.")
    seed: int = Field(default=0, ge=0, description="Random seed (same seed, same weights).")
    epoch_delay: float = Field(
        default=0.0, ge=0, le=10, description="Seconds to pause after each epoch (for demos)."
    )


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
DATASET_HELP = (
    "a digits dataset is a folder with one sub-folder per digit (0 … 9) holding PNG or JPEG "
    "images, or an .npz file with arrays X (n×64) and y; `forgehub demo data` writes one"
)


def load_dataset(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The training data: sample digits drawn by :func:`sample_digits` (no path), an ``.npz``
    with arrays ``X`` (n×64) and ``y``, or a folder of labelled images (``0/*.png`` …
    ``9/*.png``), the way people keep image data."""
    if path is None:
        return sample_digits()
    path = Path(path)
    if path.is_dir():
        npz = sorted(path.rglob("*.npz"))
        if len(npz) == 1 and not any(p.suffix.lower() in IMAGE_SUFFIXES for p in path.rglob("*")):
            path = npz[0]
        else:
            return _load_image_folder(path)
    try:  # a file input arrives under its digest, with no suffix: try it as an .npz
        with np.load(path) as data:
            return np.asarray(data["X"], dtype=np.float64), np.asarray(data["y"])
    except (OSError, KeyError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path.name} is not a dataset ({exc}): {DATASET_HELP}") from None


def _load_image_folder(root: Path) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if not (folder.name.isdigit() and 0 <= int(folder.name) <= 9):
            raise ValueError(f"sub-folder {folder.name!r} is not a digit 0-9: {DATASET_HELP}")
        for img in sorted(folder.iterdir()):
            if img.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    xs.append(image_to_pixels(img.read_bytes()))
                except ValueError as exc:
                    raise ValueError(f"{folder.name}/{img.name}: {exc}") from None
                ys.append(int(folder.name))
    if len(set(ys)) < 2:
        raise ValueError(f"{root.name} holds images of fewer than two digits: {DATASET_HELP}")
    return np.stack(xs), np.asarray(ys)


def draw_digit(digit: int, rng: np.random.Generator) -> Any:
    """One digit drawn like a person's: a font at a random size, stroke, place and slant."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("L", (32, 32), 0)
    font = ImageFont.load_default(size=int(rng.integers(20, 30)))
    dx, dy = (int(v) for v in rng.integers(-3, 4, size=2))
    ImageDraw.Draw(img).text(
        (16 + dx, 16 + dy),
        str(digit),
        fill=255,
        font=font,
        anchor="mm",
        stroke_width=int(rng.integers(0, 3)),
        stroke_fill=255,
    )
    return img.rotate(float(rng.uniform(-14, 14)), resample=Image.Resampling.BILINEAR)


def sample_digits(per_digit: int = 150, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A labelled sample of drawn digits as 8×8 grey levels (0-16), the demo's own data."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(per_digit):
        for d in range(10):
            xs.append(_pixels(draw_digit(d, rng)))
            ys.append(d)
    return np.stack(xs), np.asarray(ys)


def _pixels(img: Any) -> np.ndarray:
    from PIL import Image

    arr = np.asarray(img.resize((8, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    return np.clip(arr / 255.0 * 16.0, 0, 16).reshape(64)


def write_samples(dest: Path, per_digit: int = 60) -> tuple[Path, Path]:
    """A sample dataset (``dest/digits-dataset/<digit>/*.png``, drawn digits) and a sample
    image (``dest/digit.png``) to try and train ``digits`` with."""
    rng = np.random.default_rng(1)
    dataset = dest / "digits-dataset"
    for d in range(10):
        folder = dataset / str(d)
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_digit):
            draw_digit(d, rng).save(folder / f"{k:03d}.png")
    image = dest / "digit.png"
    draw_digit(8, np.random.default_rng(2)).save(image)
    return dataset, image


class MLP:
    """A one-hidden-layer perceptron (ReLU, softmax) trained with Adam on minibatches: the
    demo's trainer, in numpy alone. Its weights load into :meth:`DigitsModule.probabilities`."""

    def __init__(self, hidden: int, learning_rate: float, seed: int, alpha: float = 1e-4) -> None:
        self.rng = np.random.default_rng(seed)
        self.lr, self.alpha, self.t = learning_rate, alpha, 0
        self.params = [*self._layer(64, hidden), *self._layer(hidden, 10)]
        self.m = [np.zeros_like(p) for p in self.params]
        self.v = [np.zeros_like(p) for p in self.params]
        self.loss_ = float("nan")

    def _layer(self, n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
        bound = np.sqrt(6.0 / (n_in + n_out))
        return (
            self.rng.uniform(-bound, bound, (n_in, n_out)),
            self.rng.uniform(-bound, bound, n_out),
        )

    def _forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        W0, b0, W1, b1 = self.params
        h = np.maximum(X @ W0 + b0, 0.0)
        z = h @ W1 + b1
        z -= z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return h, e / e.sum(axis=1, keepdims=True)

    def partial_fit(self, X: np.ndarray, y: np.ndarray, batch: int = 200) -> None:
        """One pass over ``X`` in shuffled minibatches."""
        order = self.rng.permutation(len(X))
        losses = []
        for start in range(0, len(X), batch):
            idx = order[start : start + batch]
            xb, yb = X[idx], y[idx]
            h, p = self._forward(xb)
            n = len(idx)
            losses.append(float(-np.log(p[np.arange(n), yb] + 1e-12).mean()))
            dz = p.copy()
            dz[np.arange(n), yb] -= 1.0
            dz /= n
            W0, _, W1, _ = self.params
            dh = (dz @ W1.T) * (h > 0)
            grads = [xb.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]
            grads[0] += self.alpha * W0 / n
            grads[2] += self.alpha * W1 / n
            self.t += 1
            for i, g in enumerate(grads):
                self.m[i] = 0.9 * self.m[i] + 0.1 * g
                self.v[i] = 0.999 * self.v[i] + 0.001 * g * g
                m_hat = self.m[i] / (1 - 0.9**self.t)
                v_hat = self.v[i] / (1 - 0.999**self.t)
                self.params[i] -= self.lr * m_hat / (np.sqrt(v_hat) + 1e-8)
        self.loss_ = float(np.mean(losses))

    def score(self, X: np.ndarray, y: np.ndarray) -> float:
        return float((self._forward(X)[1].argmax(axis=1) == y).mean())


def split(
    X: np.ndarray, y: np.ndarray, seed: int, val: float = 0.2
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A stratified train/validation split (each label in both, in proportion)."""
    rng = np.random.default_rng(seed)
    train_idx: list[int] = []
    val_idx: list[int] = []
    for label in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == label))
        k = max(1, int(round(len(idx) * val)))
        val_idx.extend(idx[:k])
        train_idx.extend(idx[k:])
    tr, va = np.asarray(sorted(train_idx)), np.asarray(sorted(val_idx))
    return X[tr], X[va], y[tr], y[va]


MAX_PIXELS = 25_000_000


def image_to_pixels(raw: bytes) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        opened = Image.open(io.BytesIO(raw))
        if opened.width * opened.height > MAX_PIXELS:
            raise ValueError(
                f"'image' is {opened.width}x{opened.height}: more than "
                f"{MAX_PIXELS // 1_000_000} megapixels; send a smaller picture of the digit"
            )
        img = opened.convert("L")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ValueError("'image' is not a PNG or JPEG image of a sensible size") from exc
    arr = np.asarray(img.resize((8, 8), Image.Resampling.LANCZOS), dtype=np.float64)
    if arr.mean() > 127:  # dark ink on light paper → light ink on dark, like the dataset
        arr = 255.0 - arr
    return (arr / 255.0 * 16.0).reshape(64)


def pixels_to_png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    arr = (np.clip(pixels.reshape(8, 8), 0, 16) / 16.0 * 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(arr, "L").save(out, "PNG")
    return out.getvalue()


class DigitsModule(Module):
    name = "digits"
    # it can batch (predict_batch), but a prediction costs microseconds: only where a
    # deployment asks for batches (--batch-size), not by default
    batch_max_size = 0
    metadata = {
        "title": "Handwritten digits",
        "summary": "Reads an 8×8 handwritten digit and returns the most likely labels.",
        "description": "A small multi-layer perceptron trained on scikit-learn's bundled digits "
        "dataset (1,797 images). Upload a PNG/JPEG or send 64 pixel values.",
        "version": "1.0.0",
        "license": "Apache-2.0",
        "authors": ["forgehub"],
        "tags": ["digits", "classification", "image", "demo"],
        "tasks": ["Computer Vision", "Classification"],
        "categories": ["AI4 trainable", "AI4 inference", "AI4 pre trained"],
        "libraries": ["Scikit-learn"],
        "data-type": ["Image"],
    }
    PredictArgs = DigitsPredictArgs
    TrainArgs = DigitsTrainArgs

    def __init__(self, weights: Path | None = None) -> None:
        self.weights_path = weights or WEIGHTS
        self.layers: list[tuple[np.ndarray, np.ndarray]] = []

    def load(self, path: Path) -> None:
        """A trained version's weights: the ``digits-weights.npz`` a training wrote (the file,
        or the output folder holding it)."""
        if path.is_dir():
            path = path / WEIGHTS.name
        if not path.is_file():
            raise ValueError(f"no {WEIGHTS.name} in the trained version's weights")
        self.weights_path = path
        self.layers = []

    def warm(self) -> None:
        if self.layers:
            return
        with np.load(self.weights_path) as w:
            n = int(w["n_layers"])
            self.layers = [(w[f"W{i}"], w[f"b{i}"]) for i in range(n)]

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        self.warm()
        h = x / 16.0
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                h = np.maximum(h, 0.0)
        h = h - h.max(axis=-1, keepdims=True)
        e = np.exp(h)
        return np.asarray(e / e.sum(axis=-1, keepdims=True))

    def predict(self, args: DigitsPredictArgs) -> Any:
        x = self._pixels(args)
        return self._answer(args, x, self.probabilities(x[None, :])[0])

    def predict_batch(self, batch: list[DigitsPredictArgs]) -> list[Any]:
        """Concurrent requests in one forward pass (the model API groups them)."""
        out: list[Any] = [None] * len(batch)
        rows, where = [], []
        for i, args in enumerate(batch):
            try:
                rows.append(self._pixels(args))
                where.append(i)
            except (ValueError, OSError) as exc:  # that request's own bad image
                out[i] = exc
        if rows:
            probs = self.probabilities(np.stack(rows))
            for k, i in enumerate(where):
                out[i] = self._answer(batch[i], rows[k], probs[k])
        return out

    @staticmethod
    def _pixels(args: DigitsPredictArgs) -> np.ndarray:
        if args.image is not None:
            return image_to_pixels(Path(args.image.filename).read_bytes())
        return np.asarray(args.pixels, dtype=np.float64)

    def _answer(self, args: DigitsPredictArgs, x: np.ndarray, p: np.ndarray) -> Any:
        order = np.argsort(p)[::-1][: args.top_k]
        labels = [{"label": int(i), "probability": round(float(p[i]), 6)} for i in order]
        if args.accept == "image/png":
            return Blob(self.annotate(x, labels[0]), "image/png")
        return {"labels": labels}

    @staticmethod
    def annotate(x: np.ndarray, best: dict[str, Any]) -> bytes:
        from PIL import Image, ImageDraw

        arr = (np.clip(x.reshape(8, 8), 0, 16) / 16.0 * 255).astype(np.uint8)
        img = Image.fromarray(arr, "L").resize((128, 128), Image.Resampling.NEAREST).convert("RGB")
        canvas = Image.new("RGB", (128, 152), "white")
        canvas.paste(img, (0, 0))
        ImageDraw.Draw(canvas).text(
            (4, 132), f"{best['label']}  ({best['probability']:.0%})", fill="black"
        )
        out = io.BytesIO()
        canvas.save(out, "PNG")
        return out.getvalue()

    def train(self, args: DigitsTrainArgs, ctx: TrainContext) -> dict[str, Any]:
        import time

        X, y = load_dataset(ctx.inputs.get("dataset"))
        y = y.astype(np.int64)
        X_train, X_val, y_train, y_val = split(X / 16.0, y, args.seed)
        clf = MLP(args.hidden_size, args.learning_rate, args.seed)
        acc = 0.0
        for epoch in range(1, args.epochs + 1):
            ctx.check_cancelled()
            clf.partial_fit(X_train, y_train)
            acc = clf.score(X_val, y_val)
            ctx.log_metric("loss", float(clf.loss_), epoch)
            ctx.log_metric("val_accuracy", acc, epoch)
            ctx.progress(epoch / args.epochs, f"epoch {epoch}/{args.epochs}")
            print(
                f"epoch {epoch}/{args.epochs} loss={clf.loss_:.4f} val_accuracy={acc:.4f}",
                flush=True,
            )
            if args.epoch_delay:
                time.sleep(args.epoch_delay)
        out = ctx.output_dir / "digits-weights.npz"
        W0, b0, W1, b1 = clf.params
        arrays: dict[str, Any] = {"n_layers": np.asarray(2), "W0": W0, "b0": b0, "W1": W1, "b1": b1}
        np.savez(out, **arrays)
        return {"val_accuracy": acc, "epochs": args.epochs, "weights": str(out)}


# -- pipeline steps (``function:`` steps of docs/pipelines.md's example) --------------------------
def prepare_split(
    inputs: dict[str, Path],
    output_dir: Path,
    held_out: float = 0.25,
    seed: int = 0,
    per_digit: int = 60,
) -> dict[str, Any]:
    """Split a dataset (the ``dataset`` input, else drawn sample digits) into ``train/`` and a
    held-out ``test/``, each a ``digits.npz`` that ``digits`` trains on."""
    X, y = load_dataset(inputs["dataset"]) if "dataset" in inputs else sample_digits(per_digit)
    X_train, X_test, y_train, y_test = split(X, y, seed, val=held_out)
    for name, (xs, ys) in {"train": (X_train, y_train), "test": (X_test, y_test)}.items():
        (output_dir / name).mkdir(parents=True, exist_ok=True)
        np.savez(output_dir / name / "digits.npz", X=xs, y=ys)
    return {"train": len(y_train), "test": len(y_test)}


def evaluate(inputs: dict[str, Path], output_dir: Path) -> dict[str, Any]:
    """Score trained weights (the ``weights`` input) on held-out data (``data``): writes
    ``metrics.json`` with the accuracy and the confusion matrix."""
    import json

    model = DigitsModule()
    model.load(inputs["weights"])
    X, y = load_dataset(inputs["data"])
    guess = model.probabilities(np.asarray(X, dtype=np.float64)).argmax(axis=1)
    confusion = np.zeros((10, 10), dtype=int)
    for truth, g in zip(y.astype(int), guess, strict=True):
        confusion[truth, g] += 1
    metrics = {"accuracy": float((guess == y).mean()), "n": int(len(y))}
    (output_dir / "metrics.json").write_text(
        json.dumps({**metrics, "confusion": confusion.tolist()}, indent=2)
    )
    return metrics


def _build_default_weights() -> None:
    """Rebuild the shipped weights with this module's own trainer, on scikit-learn's handwritten
    digits (a development dependency) and the drawn sample digits, so that the shipped model
    reads both handwriting and the sample images. ``python -m forgehub.demo.digits``."""
    from sklearn.datasets import load_digits

    hand = load_digits()
    drawn_X, drawn_y = sample_digits(per_digit=200, seed=5)
    X = np.concatenate([hand.data, drawn_X]) / 16.0
    y = np.concatenate([hand.target, drawn_y]).astype(np.int64)
    X_train, X_val, y_train, y_val = split(X, y, seed=0)
    clf = MLP(128, 0.01, seed=0)
    for _ in range(60):
        clf.partial_fit(X_train, y_train)
    W0, b0, W1, b1 = clf.params
    np.savez(WEIGHTS, n_layers=np.asarray(2), W0=W0, b0=b0, W1=W1, b1=b1)
    print(f"wrote {WEIGHTS} (val_accuracy={clf.score(X_val, y_val):.3f})")


if __name__ == "__main__":
    _build_default_weights()
