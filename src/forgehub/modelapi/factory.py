"""Build the standalone model API from an environment variable, for multi-process serving.

``forgehub module serve --workers N`` migrates the store and recovers lost trainings once, then
asks uvicorn for N processes sharing one socket; each imports :func:`app_from_env`, loads the
modules and calls their ``warm()`` once.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

ENV = "FORGEHUB_MODELAPI_SPEC"


def spec_to_env(targets: list[tuple[str, str]], db_url: str, work_dir: Path, **options: Any) -> str:
    """``options`` are keyword arguments of :func:`create_model_app`."""
    return json.dumps(
        {"targets": targets, "db_url": db_url, "work_dir": str(work_dir), "options": options}
    )


def app_from_env() -> FastAPI:
    from forgehub.modelapi.standalone import create_model_app
    from forgehub.module.discovery import import_target, wrap
    from forgehub.server.gcfreeze import freeze_after_startup

    spec: dict[str, Any] = json.loads(os.environ[ENV])
    modules = [wrap(import_target(target), target, name) for name, target in spec["targets"]]
    return freeze_after_startup(
        create_model_app(
            modules, spec["db_url"], Path(spec["work_dir"]), recover=False, **spec["options"]
        )
    )
