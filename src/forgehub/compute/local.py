"""``local``: jobs run on the server machine, a few at a time; the rest wait in the queue.

Each attempt is a detached ``forgehub job run`` process (its own session), so a server restart
does not stop it: the runner buffers its logs and reconnects.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from pydantic import Field

from forgehub.compute import gpus
from forgehub.compute.base import (
    BackendStatus,
    Capacity,
    ComputeAdapter,
    ComputeConfig,
    ComputeError,
    Launch,
    Resources,
)
from forgehub.jobs.leftovers import start_time
from forgehub.states import JobState


def runner_command(launch: Launch) -> list[str]:
    return [
        sys.executable,
        "-m",
        "forgehub.jobs.runner",
        "--server",
        launch.server_url,
        "--job",
        launch.job_id,
    ]


class LocalCompute(ComputeAdapter):
    kind = "local"

    class Config(ComputeConfig):
        slots: int = Field(
            default=0, ge=0, le=256, description="Jobs at once (0: the server's local_job_slots)."
        )

    slots_on_server = True
    log_dir: Path | None = None  # where runner processes write their own diagnostics
    cache_dir: Path | None = None  # the server's job cache (under its data directory)

    @classmethod
    def runs_on_server(cls, config: dict[str, Any]) -> bool:
        return True

    def test(self) -> None:
        return None

    def capacity(self) -> Capacity:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        slots = getattr(self.config, "slots", 0) or None
        found = gpus.machine_gpus()
        notes = [str(g) for g in found]
        return Capacity(float(os.cpu_count() or 1), len(found), pages // (1 << 20), slots, notes)

    def refuses(self, res: Resources) -> str | None:
        return gpus.refusal(gpus.machine_gpus(), res.gpu, res.gpu_model, "the server")

    def submit(self, launch: Launch) -> str:
        env = {**os.environ, "FORGEHUB_JOB_TOKEN": launch.token}
        # module code on the server's machine runs in the sandbox wherever bubblewrap is here
        env["FORGEHUB_SANDBOX"] = os.environ.get("FORGEHUB_SANDBOX", "auto")
        if self.cache_dir is not None:
            env.setdefault("FORGEHUB_CACHE_DIR", str(self.cache_dir))
        if launch.gpus is not None:  # the job's own GPUs ("": none), chosen by the dispatcher
            env["CUDA_VISIBLE_DEVICES"] = launch.gpus
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            path = self.log_dir / f"{launch.job_id}-{launch.attempt}.log"
            log = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = subprocess.Popen(
                runner_command(launch),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives a server restart; cancel ends the tree
                close_fds=True,
            )
        except OSError as exc:
            raise ComputeError(f"cannot start the job runner: {exc}") from exc
        finally:
            if isinstance(log, int) and log > 0:
                os.close(log)
        _reap_later(proc)
        name = f"{launch.job_id}-{launch.attempt}"
        return f"{proc.pid}:{start_time(proc.pid) or ''}:{name}:{launch.gpus or ''}:{this_host()}"

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        out = {}
        for h in handles:
            pid, started, name = (h.split(":") + ["", ""])[:3]
            if not here(h):  # another server machine started it: its runner's lease tells
                out[h] = BackendStatus(None, "running on another server machine")
            elif pid.isdigit() and started and start_time(int(pid)) == started:
                out[h] = BackendStatus(None, "running on the server")
            else:
                why = "the job runner process exited"
                last = self._last_line(name)
                out[h] = BackendStatus(
                    JobState.failed, f"{why}: {last}" if last else why, lost=True
                )
        return out

    def _last_line(self, name: str) -> str:
        if self.log_dir is None or not name:
            return ""
        try:
            with open(self.log_dir / f"{name}.log", "rb") as fh:
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - 2000))
                lines = fh.read().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1][:300] if lines else ""

    def cancel(self, handle: str) -> None:
        pid, started = (handle.split(":") + [""])[:2]
        if not here(handle):
            return  # on another server machine: the runner hears the cancel at its next report
        if pid.isdigit() and started and start_time(int(pid)) == started:
            try:
                os.killpg(int(pid), signal.SIGTERM)  # the runner stops its module, then exits
            except ProcessLookupError:
                pass


def held_gpus(handles: list[str]) -> set[str]:
    """The GPUs that local jobs with these handles hold."""
    return {d for h in handles if here(h) for d in (h.split(":") + ["", "", ""])[3].split(",") if d}


@functools.cache
def this_host() -> str:
    """This machine, as a local job's handle names it (several servers may share a database)."""
    try:
        host = Path("/etc/machine-id").read_text().strip()
    except OSError:
        host = ""
    if not host.isalnum():
        import socket

        host = "".join(c for c in socket.gethostname() if c.isalnum() or c in "-.")
    return host


def here(handle: str) -> bool:
    """Was the local job of ``handle`` started on this machine? (Older handles name none.)"""
    parts = handle.split(":")
    return len(parts) < 5 or not parts[4] or parts[4] == this_host()


def _reap_later(proc: subprocess.Popen[bytes]) -> None:
    """Wait for the runner in a daemon thread, so it never lingers as a zombie."""
    import threading

    threading.Thread(target=proc.wait, daemon=True, name=f"reap-{proc.pid}").start()
