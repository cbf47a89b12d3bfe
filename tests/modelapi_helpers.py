from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from forgehub.modelapi import create_model_app
from forgehub.module import load

STYLE = "tests.modules.deepaas_style"


@contextmanager
def model_client(tmp_path: Path, *targets: str, **kw: object) -> Iterator[TestClient]:
    modules = [load(t) for t in targets]
    app = create_model_app(modules, f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "work", **kw)  # type: ignore[arg-type]
    with TestClient(app) as client:
        yield client


def digit_png(index: int) -> tuple[bytes, int]:
    """A real image of dataset digit ``index``: dark ink on white, 64×64, as a user would send."""
    from sklearn.datasets import load_digits

    d = load_digits()
    arr = 255 - (d.images[index] / 16.0 * 255).astype(np.uint8)
    img = Image.fromarray(arr, "L").resize((64, 64), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue(), int(d.target[index])


def native_url(url: str) -> str:
    """forgehub's view of a training (state, progress, metrics) for its DEEPaaS ``/v2`` URL:
    ``/v2/models/M/train/ID`` is ``/api/v1/models/M/trainings/ID`` (under the platform's
    ``/api/v1/model-api``, ``/api/v1/model-api/models/M/trainings/ID``)."""
    prefix, _, rest = url.partition("/v2/models/")
    name, _, tail = rest.partition("/train/")
    return f"{prefix or '/api/v1'}/models/{name}/trainings/{tail}".rstrip("/")


def wait_state(client: TestClient, url: str, states: set[str], timeout: float = 60) -> dict:
    """Wait for the training at DEEPaaS URL ``url`` to reach one of ``states``; its
    forgehub view."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(native_url(url)).json()
        if body["state"] in states:
            return body  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"{url} never reached {states}: {body}")
