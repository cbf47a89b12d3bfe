"""The module host: a module in its own environment, answering the server (``python -m
forgehub.module.host``, started by :class:`forgehub.envs.hosted.HostedModule`).

It runs with the environment's interpreter and imports nothing of forgehub's beyond the
standard-library files of the host overlay, so the module's own packages (an old pydantic, a
pinned numpy) are the only ones there. Requests and answers are JSON lines: requests on stdin,
answers on the process's original stdout; the module's own prints go to stderr (the server's
log), so they cannot corrupt an answer.

``{"op": "open", "name": N, "weights": PATH|null}``
    load the module (by name, else the one module the environment has), its trained weights,
    ``warm()``; answers its description (metadata and argument specs).
``{"op": "predict", "args": {...}, "files": {ARG: {"path", "content_type", "filename"}},
"out": PATH}``
    validate and predict; a file or bytes answer is written to ``out``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any


def _upload(arg: str, f: dict[str, Any]) -> Any:
    from forgehub.module.contract import UploadedFile

    return UploadedFile(arg, str(f["path"]), f.get("content_type"), f.get("filename"))


class Host:
    def __init__(self) -> None:
        self.module: Any = None

    def open(self, req: dict[str, Any]) -> dict[str, Any]:
        from forgehub.module import ModuleNotFound, discover, load
        from forgehub.module.loaded import jsonable

        try:
            module = load(req["name"])
        except ModuleNotFound:
            found = sorted(discover())
            if len(found) != 1:
                raise ModuleNotFound(
                    "this environment provides "
                    + (f"the modules {', '.join(found)}" if found else "no module")
                    + f"; there is no {req['name']!r}"
                ) from None
            module = load(found[0])
        module.name = req["name"]
        if req.get("weights"):
            module.load_weights(Path(req["weights"]))
        module.warm()
        self.module = module
        return {
            "name": module.name,
            "kind": module.kind,
            "trainable": module.trainable,
            "metadata": module.metadata(),
            "predict_specs": jsonable([dataclasses.asdict(s) for s in module.predict_specs]),
            "train_specs": jsonable([dataclasses.asdict(s) for s in module.train_specs]),
            "response_schema": jsonable(module.response_schema()),
        }

    def predict(self, req: dict[str, Any]) -> dict[str, Any]:
        from forgehub.module.loaded import jsonable

        args = dict(req.get("args") or {})
        for name, f in (req.get("files") or {}).items():
            args[name] = [_upload(name, x) for x in f] if isinstance(f, list) else _upload(name, f)
        out = self.module.predict(self.module.validate_predict(args)).materialize()
        if out.kind == "json":
            return {"kind": "json", "body": jsonable(out.body)}
        dest = Path(req["out"])
        if out.kind == "bytes":
            dest.write_bytes(out.body)
        else:  # a file of the module's: copied out, as the sandbox's /tmp is its own
            shutil.copyfile(out.body, dest)
            if out.delete:
                Path(out.body).unlink(missing_ok=True)
        return {"kind": "file", "media_type": out.media_type, "filename": out.filename}


def main() -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # the module's prints: to the log, never into an answer
    sys.stdout = sys.stderr
    from forgehub.module.args import ArgErrors
    from forgehub.module.loaded import ModuleError, jsonable

    host = Host()
    for line in sys.stdin:
        try:
            req = json.loads(line)
            op = req.get("op")
            if op not in ("open", "predict"):
                raise ModuleError(f"unknown request {op!r}", 400)
            answer = host.open(req) if op == "open" else host.predict(req)
        except ArgErrors as exc:
            answer = {"error": "args", "errors": exc.errors, "body": jsonable(exc.body)}
        except ModuleError as exc:
            answer = {"error": "module", "message": str(exc), "status": exc.status}
        except Exception as exc:  # noqa: BLE001 - reported to the server, which answers 500
            answer = {"error": "module", "message": f"{type(exc).__name__}: {exc}", "status": 500}
        answers.write(json.dumps(answer) + "\n")


if __name__ == "__main__":
    main()
