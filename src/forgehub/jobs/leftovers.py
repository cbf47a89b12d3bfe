"""What a runner leaves behind when it is killed outright (``kill -9`` of a worker, a crash):
its work folder, and the module's processes and *their* children, which outlive it (the module
dies with the runner, its own children do not). A worker cleans up at start-up.

Each work folder names its owner (the runner's process id and start time). A folder whose owner
is gone is reaped: every process whose environment points into it (``FORGEHUB_OUTPUT_DIR``) is
killed — which finds the children of the module even if they left its process group — and the
folder is removed. Folders of live runners (another worker, ``forgehub job run`` on the same
machine) are left alone.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from pathlib import Path

OWNER = ".owner.json"
YOUNG_S = 60.0  # a folder without an owner record yet may be being created


def start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot): with the PID, a unique handle."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has exited
    return fields[19]


def claim(work: Path) -> None:
    """Record that this process owns ``work``."""
    pid = os.getpid()
    (work / OWNER).write_text(json.dumps({"pid": pid, "start": start_time(pid)}))


def _owner_alive(work: Path) -> bool:
    try:
        owner = json.loads((work / OWNER).read_text())
    except (OSError, ValueError):
        return time.time() - work.stat().st_mtime < YOUNG_S
    return start_time(int(owner.get("pid", 0))) == owner.get("start") is not None


def processes_of(work: Path) -> list[int]:
    """Processes (of this user) whose environment points into ``work``."""
    needle = f"FORGEHUB_OUTPUT_DIR={work}/".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def clean(root: Path) -> list[str]:
    """Reap the work folders under ``root`` whose runner is gone; their names."""
    reaped = []
    try:
        folders = [d for d in root.iterdir() if d.is_dir()]
    except OSError:
        return []
    for work in folders:
        try:
            if _owner_alive(work):
                continue
        except OSError:
            continue
        for pid in processes_of(work):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        shutil.rmtree(work, ignore_errors=True)
        reaped.append(work.name)
    return reaped
