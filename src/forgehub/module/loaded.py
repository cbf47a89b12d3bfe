"""A loaded module, whatever its kind: the one interface the model API, CLI and runner use."""

from __future__ import annotations

import abc
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgehub.module.args import ArgSpec
from forgehub.module.contract import TrainContext

JSON_TYPES = ("application/json", "*/*")


@dataclass
class Output:
    """What predict produced, ready to send.

    ``kind`` is ``json`` (``body`` is JSON-able), ``bytes``, ``file`` (``body`` is a path) or
    ``stream`` (``body`` is an iterator of bytes).
    """

    kind: str
    body: Any
    media_type: str = "application/json"
    filename: str | None = None
    delete: bool = False
    batch: int = 0  # answered in a batch of this many requests (0: on its own)

    def materialize(self) -> Output:
        """Turn a stream into bytes, so the output can cross a process boundary."""
        if self.kind == "stream":
            return Output("bytes", b"".join(self.body), self.media_type)
        return self


class ModuleError(Exception):
    """Module code failed; ``status`` is the HTTP status to report, the message is shown."""

    def __init__(self, message: str, status: int = 500) -> None:
        super().__init__(message)
        self.status = status


class LoadedModule(abc.ABC):
    name: str
    target: str  # import path to load it again in another process
    kind: str
    # a module in a process of its own (see forgehub.envs.hosted): predictions wait on it, so
    # never on the event loop; uploads go to its folder
    upload_dir: Path | None = None

    @abc.abstractmethod
    def metadata(self) -> dict[str, Any]:
        """DEEPaaS-shaped metadata (``id``, ``name``, ``description``, ``author``, ...)."""

    @property
    @abc.abstractmethod
    def predict_specs(self) -> list[ArgSpec]: ...

    @property
    @abc.abstractmethod
    def train_specs(self) -> list[ArgSpec]: ...

    @property
    @abc.abstractmethod
    def trainable(self) -> bool: ...

    @property
    def accept_spec(self) -> ArgSpec | None:
        for spec in self.predict_specs:
            if spec.name == "accept":
                return spec
        return None

    @abc.abstractmethod
    def warm(self) -> None: ...

    def load_weights(self, path: Path) -> None:
        """Use a trained version's weights (a file or a folder) from now on; then :meth:`warm`.

        Raises :class:`ModuleError` (501) for a module that cannot."""
        raise ModuleError(f"module {self.name!r} cannot load trained weights", 501)

    @abc.abstractmethod
    def validate_predict(self, data: dict[str, Any]) -> Any:
        """Validate raw values; raises :class:`ArgErrors` with a message per field."""

    @abc.abstractmethod
    def validate_train(self, data: dict[str, Any]) -> Any: ...

    @abc.abstractmethod
    def predict(self, args: Any) -> Output:
        """Run a prediction; raises :class:`ModuleError` with a message on failure."""

    @abc.abstractmethod
    def train(self, args: Any, ctx: TrainContext) -> Any: ...

    # -- batching: a module that predicts several requests in one call ---------------------
    batch_max_size: int = 0  # 0: it does not batch unless a deployment sets a size
    batch_wait_ms: float = 0.0
    can_batch: bool = False  # it has predict_batch

    def predict_batch(self, batch: list[Any]) -> list[Output | ModuleError]:
        """Predict validated ``batch`` together: one output (or error) per item, in order."""
        raise ModuleError(f"module {self.name!r} does not batch", 501)

    def response_schema(self) -> dict[str, Any] | None:
        return None

    def swagger_definitions(self) -> dict[str, Any] | None:
        """Swagger 2.0 definitions of the response (``ModelPredictionResponse`` and what it
        refers to), where the module can say better than :meth:`response_schema`."""
        return None

    def describe(self) -> dict[str, Any]:
        from forgehub.module.args import object_schema

        return {
            "name": self.name,
            "kind": self.kind,
            "target": self.target,
            "trainable": self.trainable,
            "metadata": self.metadata(),
            "predict_args": object_schema(self.predict_specs),
            "train_args": object_schema(self.train_specs),
        }


def jsonable(value: Any) -> Any:
    """Make args or results storable as JSON (uploads become their client-side names)."""
    if hasattr(value, "original_filename") and hasattr(value, "content_type"):
        return {"filename": value.original_filename, "content_type": value.content_type}
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump())
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


def iter_file(path: Path, chunk: int = 1 << 16) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            yield block
