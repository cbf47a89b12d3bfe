"""A hostile module: its training tries to get out of the sandbox and reports what it reached.

Each attempt records "blocked: <error>" or what it got. Used by tests/test_sandbox.py.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from forgehub.module import Module, TrainContext


class Args(BaseModel):
    data_dir: str = ""
    server_port: int = 0
    secret_file: str = ""


def _try(fn: Any) -> str:
    try:
        return f"got: {fn()!r}"[:200]
    except Exception as exc:  # noqa: BLE001 - the point is to report what stopped it
        return f"blocked: {type(exc).__name__}"


class Escape(Module):
    name = "escape"
    TrainArgs = Args

    def train(self, args: Args, ctx: TrainContext) -> Any:
        data = Path(args.data_dir)
        report = {
            "read_data_dir": _try(lambda: sorted(os.listdir(data))),
            "read_database": _try(lambda: (data / "forgehub.db").read_bytes()[:16]),
            "read_secret": _try(lambda: Path(args.secret_file).read_text()),
            "write_data_dir": _try(lambda: (data / "planted").write_text("x")),
            "write_code": _try(lambda: Path(__file__).with_name("planted").write_text("x")),
            "connect_server": _try(
                lambda: socket.create_connection(("127.0.0.1", args.server_port), 2).close()
            ),
            "connect_outside": _try(lambda: socket.create_connection(("1.1.1.1", 53), 2).close()),
            "env_secrets": sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k),
        }
        (ctx.output_dir / "report.txt").write_text("written inside the work directory")
        return report
