"""Pipelines in Python: the same definitions as the YAML files, built with calls.

.. code-block:: python

    from forgehub.pipeline import Pipeline

    p = Pipeline("digits", params={"epochs": 20, "held_out": 0.25})
    prepare = p.function(
        "prepare", "forgehub.demo.digits:prepare_split",
        args={"held_out": p.param("held_out")}, outputs=["train", "test"],
    )
    train = p.train("train", "digits", inputs={"dataset": prepare["train"]},
                    args={"epochs": p.param("epochs")})
    p.function("evaluate", "forgehub.demo.digits:evaluate",
               inputs={"weights": train, "data": prepare["test"]}, output="digits-metrics")

    run = p.run(on="local")          # waits for the end; p.run(detach=True) returns at once
    print(run["state"], [s["state"] for s in run["steps"]])

``p.to_dict()`` is what ``forgehub pipeline run FILE`` reads from YAML, and
``Pipeline.from_file(path)`` reads such a file back.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from forgehub.pipelines.definition import Definition, load


class Output(str):
    """A reference to a step's output (``steps.NAME`` or ``steps.NAME.OUTPUT``)."""

    def __getitem__(self, name: str) -> Output:  # type: ignore[override]
        return Output(f"{self}.{name}")


class Pipeline:
    def __init__(
        self,
        name: str,
        params: dict[str, Any] | None = None,
        description: str = "",
        compute: str | None = None,
        storage: str | None = None,
    ) -> None:
        self.doc: dict[str, Any] = {
            "name": name,
            "description": description,
            "params": dict(params or {}),
            "steps": {},
        }
        if compute:
            self.doc["compute"] = compute
        if storage:
            self.doc["storage"] = storage

    @classmethod
    def from_file(cls, path: str | Path) -> Pipeline:
        d = load(Path(path).read_text())
        p = cls(d.name)
        p.doc = d.model_dump(mode="json", exclude_none=True)
        return p

    def param(self, name: str) -> str:
        if name not in self.doc["params"]:
            raise KeyError(f"the pipeline has no parameter {name!r}")
        return f"${{params.{name}}}"

    def _step(self, name: str, spec: dict[str, Any], **options: Any) -> Output:
        if name in self.doc["steps"]:
            raise ValueError(f"there is already a step {name!r}")
        for key, value in options.items():
            if value is None or value == [] or value == {}:
                continue
            if key == "inputs":
                value = {k: str(v) for k, v in value.items()}
            if key == "after":
                value = [str(v).split(".")[1] if str(v).startswith("steps.") else v for v in value]
            spec[key] = value
        self.doc["steps"][name] = spec
        return Output(f"steps.{name}")

    def train(self, name: str, module: str, **options: Any) -> Output:
        """A module training (inputs: ``dataset``, …; args: the module's training args)."""
        return self._step(name, {"train": module}, **options)

    def predict(self, name: str, module: str, **options: Any) -> Output:
        """A batch prediction over the ``data`` input."""
        return self._step(name, {"predict": module}, **options)

    def command(self, name: str, argv: list[str], **options: Any) -> Output:
        """A command (``{python}`` as its first word: the runner's own Python)."""
        return self._step(name, {"command": list(argv)}, **options)

    def function(self, name: str, target: str, **options: Any) -> Output:
        """``package.module:function(inputs, output_dir, **args)``."""
        return self._step(name, {"function": target}, **options)

    def to_dict(self) -> dict[str, Any]:
        """The definition, checked (raises ``DefinitionError`` naming the step and field)."""
        d: Definition = load(self.doc)
        return d.model_dump(mode="json", exclude_none=True)

    def run(
        self,
        on: str | None = None,
        store: str | None = None,
        params: dict[str, Any] | None = None,
        steps: dict[str, dict[str, Any]] | None = None,
        no_cache: bool = False,
        detach: bool = False,
        server: str | None = None,
        token: str | None = None,
        timeout: float = 3600,
    ) -> dict[str, Any]:
        """Run it on the server (``FORGEHUB_URL``/``FORGEHUB_TOKEN`` or your login); returns
        the run as the API describes it, once it ended unless ``detach``."""
        from forgehub.cli.client import Client

        c = Client(server, token)
        body = {
            "definition": self.to_dict(),
            "params": params or {},
            "on": on,
            "store": store,
            "steps": steps or {},
            "no_cache": no_cache,
        }
        run: dict[str, Any] = c.api.call("POST", "/api/v1/pipeline-runs", json=body)
        deadline = time.monotonic() + timeout
        while not detach and run["state"] in ("running", "cancelling"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run['id']} did not end within {timeout} s")
            time.sleep(0.5)
            run = c.api.call("GET", f"/api/v1/pipeline-runs/{run['id']}")
        return run
