"""A native test module that reports which process served it and how often it was warmed."""

from __future__ import annotations

import os
import sys
import time

from pydantic import BaseModel, Field

from forgehub.module import Module


class Args(BaseModel):
    work_ms: int = Field(default=0, ge=0, le=1000)


class Probe(Module):
    name = "probe"
    metadata = {"summary": "reports its pid and warm count"}
    PredictArgs = Args

    def __init__(self) -> None:
        self.warm_calls = 0

    def warm(self) -> None:
        self.warm_calls += 1
        print(f"probe warmed in pid {os.getpid()}", file=sys.stderr, flush=True)

    def predict(self, args: Args) -> dict[str, int]:
        end = time.perf_counter() + args.work_ms / 1000
        while time.perf_counter() < end:
            pass
        return {"pid": os.getpid(), "warm_calls": self.warm_calls}
