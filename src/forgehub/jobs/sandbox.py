"""The sandbox module code runs in: bubblewrap (``bwrap``), on the server machine and on workers
whose owner asks for it (``forgehub worker --sandbox``).

Inside, the module sees the system's programs and libraries, its Python environment and its
inputs, read-only; it may write only its job's work directory (and a private ``/tmp``); the
data directory, the server's secrets and other users' files are not there at all; it has no
network (the runner, outside, talks to the server for it); and it gets a clean environment with
no credentials. Its process tree ends with the runner (``--die-with-parent``, a PID namespace).

``FORGEHUB_SANDBOX`` says how a runner uses it: ``on`` (a job fails when bubblewrap is missing),
``auto`` (the default on the server's ``local`` compute: used when installed, and the job log
says when it is not) or ``off``.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

MODES = ("auto", "on", "off")
SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/opt")
ETC = (
    "/etc/alternatives",
    "/etc/ca-certificates",
    "/etc/group",
    "/etc/hosts",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/mime.types",
    "/etc/nsswitch.conf",
    "/etc/passwd",
    "/etc/ssl",
)
KEEP_ENV = (
    "PATH",
    "LANG",
    "LANGUAGE",
    "TZ",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONNOUSERSITE",
    "VIRTUAL_ENV",
    "TERM",
)
KEEP_PREFIXES = ("LC_", "OMP_", "OPENBLAS_", "MKL_", "CUDA_", "NVIDIA_")


class SandboxMissing(RuntimeError):
    """The sandbox is required here but bubblewrap is not installed."""


def mode() -> str:
    value = os.environ.get("FORGEHUB_SANDBOX", "off").strip().lower()
    return value if value in MODES else "on"  # an unknown value errs on the safe side


def bwrap() -> str | None:
    return shutil.which("bwrap")


def python_paths() -> list[Path]:
    """What the interpreter needs to run the module: its prefixes and its import path (the
    current directory excluded)."""
    out: list[Path] = []
    here = Path.cwd().resolve()
    for entry in [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]:
        if not entry:
            continue
        path = Path(entry).resolve()
        if path == here or not path.exists():
            continue
        out.append(path)
    for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep):
        if entry and Path(entry).exists():
            out.append(Path(entry).resolve())
    return out


def clean_env(env: dict[str, str], work: Path) -> dict[str, str]:
    """The module's environment: the job's own variables, locale and threads, no secrets."""
    out = {
        k: v
        for k, v in env.items()
        if k in KEEP_ENV
        or k.startswith(KEEP_PREFIXES)
        or k.startswith("FORGEHUB_INPUT_")
        or k in ("FORGEHUB_JOB_ID", "FORGEHUB_OUTPUT_DIR", "FORGEHUB_EVENTS_FD")
    }
    out["HOME"] = str(work)
    out["TMPDIR"] = "/tmp"
    return out


def wrap(
    argv: list[str], work: Path, readable: Iterable[Path], tool: str, gpus: bool = False
) -> list[str]:
    """``argv`` run inside the sandbox: ``work`` writable, ``readable`` read-only; with
    ``gpus``, the NVIDIA device nodes too (``CUDA_VISIBLE_DEVICES`` picks the job's own)."""
    args = [tool, "--unshare-all", "--die-with-parent", "--proc", "/proc", "--dev", "/dev"]
    if gpus:
        for node in sorted(glob.glob("/dev/nvidia*")):
            args += ["--dev-bind", node, node]
    args += ["--tmpfs", "/tmp"]  # first: what is bound below may lie under /tmp
    for top in SYSTEM:
        p = Path(top)
        if p.is_symlink():
            args += ["--symlink", os.readlink(p), top]
        elif p.is_dir():
            args += ["--ro-bind", top, top]
    for item in ETC:
        if os.path.lexists(item):
            args += ["--ro-bind", item, item]
    seen: set[str] = set()
    for path in sorted({str(Path(p).resolve()) for p in readable}, key=len):
        if any(path == s or path.startswith(s + "/") for s in seen):
            continue  # inside a folder already bound
        if path.startswith(str(work)):
            continue
        seen.add(path)
        args += ["--ro-bind", path, path]
    args += ["--bind", str(work), str(work), "--chdir", str(work)]
    return [*args, "--", *argv]
