"""Timed ``forgehub`` processes run as an installed package runs: from compiled bytecode.

pip compiles a wheel's modules when it installs it. An editable install (``make install``)
compiles each module when it is first imported, but not where ``PYTHONDONTWRITEBYTECODE`` is
set (as on some CI images): there every command compiles forgehub's sources again, ~60 ms of a
command's start on this machine, which no user of an installed forgehub pays. The benchmarks
that time the CLI compile the package first (Python reads bytecode whatever that variable says).
"""

from __future__ import annotations

import compileall
from pathlib import Path

import forgehub


def compile_forgehub() -> None:
    compileall.compile_dir(Path(forgehub.__file__).parent, quiet=1)
