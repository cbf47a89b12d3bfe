"""``python -m forgehub.pipelines.call package.module:function '{"arg": ...}'``: a pipeline's
function step. The function is called as ``function(inputs, output_dir, **args)``: ``inputs``
maps each input name to its path, ``output_dir`` is where it writes its output. What it returns
(if anything) is written to ``output_dir/result.json``."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m forgehub.pipelines.call MODULE:FUNCTION ARGS_JSON", file=sys.stderr)
        return 2
    target, args_json = argv
    module_name, _, attr = target.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        print(f"cannot load {target}: {exc}", file=sys.stderr)
        return 2
    args: dict[str, Any] = json.loads(args_json)
    prefix = "FORGEHUB_INPUT_"
    inputs = {
        k[len(prefix) :].lower(): Path(v) for k, v in os.environ.items() if k.startswith(prefix)
    }
    out = Path(os.environ.get("FORGEHUB_OUTPUT_DIR", "."))
    result = fn(inputs, out, **args)
    if result is not None:
        (out / "result.json").write_text(json.dumps(result, indent=2, default=str))
        print(json.dumps(result, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
