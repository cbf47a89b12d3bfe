"""The native module contract.

A module is a class registered under the entry-point group ``forgehub.modules``::

    class Digits(forgehub.module.Module):
        name = "digits"
        metadata = {"title": "Digits", "summary": "..."}
        PredictArgs = MyPredictArgs      # a pydantic model; File fields are uploads
        TrainArgs = MyTrainArgs

        def warm(self) -> None: ...
        def predict(self, args: MyPredictArgs) -> Any: ...
        def train(self, args: MyTrainArgs, ctx: TrainContext) -> dict: ...

``predict`` returns something JSON-able, :class:`Blob` (bytes with a media type),
:class:`FilePath` (a file to send), or :class:`Stream` (an iterator of bytes, streamed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # the contract imports nothing outside the standard library: it also runs
    # in a module's own environment, where a DEEPaaS module may bring an old pydantic or none
    from pydantic import BaseModel, GetCoreSchemaHandler, GetJsonSchemaHandler
    from pydantic.json_schema import JsonSchemaValue
    from pydantic_core import core_schema


class UploadedFile:
    """An uploaded file handed to a module: a local temporary path plus what the client sent.

    It has the attributes of DEEPaaS's ``UploadedFile`` (``name``, ``filename``,
    ``content_type``, ``original_filename``); ``filename`` is the local path.
    """

    __slots__ = ("name", "filename", "content_type", "original_filename")

    def __init__(
        self, name: str, filename: str, content_type: str | None, original_filename: str | None
    ) -> None:
        self.name = name
        self.filename = filename
        self.content_type = content_type
        self.original_filename = original_filename

    @property
    def path(self) -> Path:
        return Path(self.filename)

    def read_bytes(self) -> bytes:
        return self.path.read_bytes()

    def __repr__(self) -> str:
        return f"UploadedFile({self.name!r}, {self.original_filename!r}, {self.content_type!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (UploadedFile, (self.name, self.filename, self.content_type, self.original_filename))

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        from pydantic_core import core_schema

        def check(value: Any) -> Any:
            if all(hasattr(value, a) for a in ("filename", "content_type")):
                return value
            raise ValueError("expected an uploaded file")

        return core_schema.no_info_plain_validator_function(check)

    @classmethod
    def __get_pydantic_json_schema__(
        cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"type": "string", "format": "binary"}


File = UploadedFile
"""Annotate a pydantic field with ``File`` to receive an upload."""


@dataclass(frozen=True)
class Blob:
    """Bytes with a media type, returned from ``predict``."""

    data: bytes
    media_type: str


@dataclass(frozen=True)
class FilePath:
    """A file to send back, returned from ``predict``; ``delete`` removes it once sent."""

    path: Path
    media_type: str = "application/octet-stream"
    filename: str | None = None
    delete: bool = False


@dataclass(frozen=True)
class Stream:
    """An iterator of byte chunks with a media type, returned from ``predict``."""

    chunks: Iterable[bytes]
    media_type: str = "application/octet-stream"


class Cancelled(Exception):
    """Raised by :meth:`TrainContext.check_cancelled` once the run was cancelled."""


@dataclass
class TrainContext:
    """What a training run gets besides its arguments."""

    inputs: dict[str, Path]
    output_dir: Path
    _metric: Callable[[str, float, int | None], None] = field(repr=False)
    _progress: Callable[[float, str | None], None] = field(repr=False)
    _cancelled: Callable[[], bool] = field(repr=False)

    def log_metric(self, name: str, value: float, step: int | None = None) -> None:
        """Record a metric value (for example loss per epoch)."""
        self._metric(name, float(value), step)

    def progress(self, fraction: float, message: str | None = None) -> None:
        """Report progress between 0 and 1."""
        self._progress(max(0.0, min(1.0, float(fraction))), message)

    def cancelled(self) -> bool:
        """True once a cancel was requested; long loops should stop soon after."""
        return self._cancelled()

    def check_cancelled(self) -> None:
        if self._cancelled():
            raise Cancelled("training cancelled")


class Module:
    """Base class of native modules; subclasses override what they support."""

    name: ClassVar[str] = ""
    metadata: ClassVar[dict[str, Any]] = {}
    PredictArgs: ClassVar[type[BaseModel] | None] = None  # None: predict takes no arguments
    TrainArgs: ClassVar[type[BaseModel] | None] = None
    # with predict_batch: concurrent requests are grouped, up to this many, waiting at most this
    # long for more after the first (a deployment may set its own)
    batch_max_size: ClassVar[int] = 16
    batch_wait_ms: ClassVar[float] = 5.0

    def warm(self) -> None:
        """Load weights and get ready for the first prediction."""

    def load(self, path: Path) -> None:
        """Use the weights at ``path`` (what a training of this module wrote to its output
        directory: one file, or a folder) instead of the shipped ones. forgehub calls it before
        :meth:`warm` when a trained version is asked for."""
        raise NotImplementedError(f"module {self.name!r} cannot load trained weights")

    def predict(self, args: Any) -> Any:
        raise NotImplementedError(f"module {self.name!r} does not predict")

    # def predict_batch(self, batch: list[PredictArgs]) -> list[Any]:
    #     Optional. Defined, it answers concurrent requests together (a model on a GPU, a
    #     vectorised forward pass): one result per request, in the same order. A result may be
    #     an exception, which only that request gets.

    def train(self, args: Any, ctx: TrainContext) -> Any:
        raise NotImplementedError(f"module {self.name!r} cannot be trained")
