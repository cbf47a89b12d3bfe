"""The process a module job runs in (``python -m forgehub.jobs.child SPEC``).

It is started by the runner in its own process group, so a cancel ends it and anything it started.
stdout and stderr go to the job log; metrics, progress and the result are JSON lines on the file
descriptor named by ``FORGEHUB_EVENTS_FD``.
"""

from __future__ import annotations

import json
import mimetypes
import os
import sys
import time
from pathlib import Path
from typing import Any


def _emitter() -> Any:
    fd = int(os.environ["FORGEHUB_EVENTS_FD"])
    out = os.fdopen(fd, "w", buffering=1)

    def emit(**event: Any) -> None:
        out.write(json.dumps(event) + "\n")

    return emit


WEIGHTS_INPUT = "+weights"  # the input a pre-trained version's weights arrive as (no user name)
SOURCE_INPUT = "+source"  # the input a module's wheel or sdist arrives as (no user name)


def _module(spec: dict[str, Any]) -> Any:
    """The module by its installed name; else where the server found it (an import path); else,
    in a module's own environment, the one module its source installed."""
    from forgehub.module import ModuleNotFound, discover, load

    try:
        module = load(spec["module"])
    except ModuleNotFound:
        if spec.get("module_target"):
            module = load(spec["module_target"])
        elif spec.get("module_source"):
            found = sorted(discover())
            if len(found) != 1:
                raise SystemExit(
                    f"{spec['module_source']} provides "
                    + (f"the modules {', '.join(found)}" if found else "no module")
                    + f"; name one of them (there is no {spec['module']!r})"
                ) from None
            module = load(found[0])
        else:
            raise
        module.name = spec["module"]
    weights = spec["inputs"].pop(WEIGHTS_INPUT, None)
    if weights is not None:  # a pre-trained version: its weights, not the shipped ones
        module.load_weights(Path(weights))
        print(f"using the weights of {spec['module']} {spec.get('version')}", flush=True)
    return module


def _described(module: Any, emit: Any) -> None:
    """The module's arguments, for the catalogue (a module from a source is never loaded by
    the server itself: its page's form comes from here)."""
    from forgehub.module.args import object_schema
    from forgehub.module.loaded import jsonable

    emit(
        type="describe",
        predict_args=jsonable(object_schema(module.predict_specs)),
        train_args=jsonable(object_schema(module.train_specs)),
    )


def train(spec: dict[str, Any], emit: Any) -> Any:
    from forgehub.module.contract import TrainContext

    module = _module(spec)
    _described(module, emit)
    args = module.validate_train(spec["args"])
    ctx = TrainContext(
        inputs={k: Path(v) for k, v in spec["inputs"].items()},
        output_dir=Path(spec["output_dir"]),
        _metric=lambda n, v, s: emit(type="metric", name=n, value=v, step=s, t=time.time()),
        _progress=lambda f, m: emit(type="progress", fraction=f, message=m),
        _cancelled=lambda: False,  # a cancel ends this process group
    )
    return module.train(args, ctx)


def predict(spec: dict[str, Any], emit: Any) -> Any:
    """Batch prediction: every file of the ``data`` input, one JSON line each."""
    from forgehub.module.contract import UploadedFile
    from forgehub.module.loaded import jsonable

    module = _module(spec)
    _described(module, emit)
    file_args = [s.name for s in module.predict_specs if s.type == "file"]
    if not file_args:
        raise SystemExit(f"module {module.name!r} takes no file argument to predict on")
    data = Path(spec["inputs"]["data"])
    files = sorted(p for p in data.rglob("*") if p.is_file()) if data.is_dir() else [data]
    module.warm()
    out_path = Path(spec["output_dir"]) / "predictions.jsonl"
    n = 0
    with out_path.open("w") as out:
        for i, path in enumerate(files, 1):
            ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            upload = UploadedFile(file_args[0], str(path), ctype, path.name)
            args = module.validate_predict({**spec["args"], file_args[0]: upload})
            res = module.predict(args).materialize()
            body = res.body if res.kind == "json" else {"media_type": res.media_type}
            if isinstance(body, dict) and set(body) == {"status", "predictions"}:
                body = body["predictions"]  # the model API's envelope: keep what it wraps
            name = str(path.relative_to(data)) if data.is_dir() else path.name
            out.write(json.dumps({"input": name, "output": jsonable(body)}) + "\n")
            n += 1
            emit(type="progress", fraction=i / len(files), message=f"{i}/{len(files)}")
    print(f"predicted {n} file(s)", flush=True)
    return {"predictions": n}


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    emit = _emitter()
    result = {"train": train, "predict": predict}[spec["kind"]](spec, emit)
    from forgehub.module.loaded import jsonable

    emit(
        type="result",
        result=jsonable(result) if isinstance(result, dict) else {"value": jsonable(result)},
    )
    # done: a module's helpers (a tensorboard started with multiprocessing) would hold the exit
    # until they end; the runner ends them with the process group instead
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
