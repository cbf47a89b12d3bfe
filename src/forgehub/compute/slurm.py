"""``slurm``: jobs go to a Slurm cluster with ``sbatch``, locally or on a login node over SSH.

The batch script runs ``forgehub job run``; resources map to ``--cpus-per-task``, ``--mem``,
``--gres=gpu:N`` and ``--time``. The job token travels on sbatch's standard input into its
environment (``--export``), never on a command line. Jobs are followed with ``squeue --json``
and stopped with ``scancel``; Slurm's states map onto forgehub's, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from pydantic import Field, SecretStr

from forgehub.compute.base import (
    BackendStatus,
    Capacity,
    ComputeAdapter,
    ComputeConfig,
    ComputeError,
    Launch,
)
from forgehub.db.models import JobState

WAITING = {
    "PENDING",
    "CONFIGURING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "SUSPENDED",
    "RESIZING",
    "SIGNALING",
    "STAGE_OUT",
}
RUNNING = {"RUNNING", "COMPLETING"}
LOST = {"NODE_FAIL", "PREEMPTED", "BOOT_FAIL"}
FAILED_AS = {
    "FAILED": "the Slurm job failed",
    "TIMEOUT": "Slurm stopped the job at its time limit (--time)",
    "OUT_OF_MEMORY": "Slurm stopped the job: out of memory (--mem)",
    "DEADLINE": "Slurm stopped the job at its deadline",
    "COMPLETED": "the Slurm job ended without the runner reporting a result",
}


def map_state(state: str, reason: str = "", exit_code: str = "") -> BackendStatus:
    """Slurm's job state (and reason) as forgehub sees it."""
    state = state.upper()
    why = f"Slurm: {state}" + (f" ({reason})" if reason and reason != "None" else "")
    if state in WAITING:
        return BackendStatus(None, why)
    if state in RUNNING:
        return BackendStatus(JobState.running, why)
    if state in LOST:
        return BackendStatus(
            JobState.failed, f"{why}: the node failed or the job was pre-empted", lost=True
        )
    if state == "CANCELLED":
        return BackendStatus(JobState.cancelled, f"{why}: cancelled in Slurm")
    msg = FAILED_AS.get(state, "the Slurm job ended")
    if exit_code:
        msg += f", exit code {exit_code}"
    return BackendStatus(JobState.failed, f"{msg} ({state})")


class SlurmCompute(ComputeAdapter):
    kind = "slurm"

    class Config(ComputeConfig):
        partition: str = Field(default="", description="--partition (empty: the default).")
        account: str = Field(default="", description="--account.")
        python: str = Field(
            default_factory=lambda: sys.executable,
            description="Python with forgehub installed, on the cluster nodes.",
        )
        server_url: str = Field(default="", description="The server URL, as nodes reach it.")
        work_dir: str = Field(default="/tmp", description="Where Slurm writes job output.")
        slurm_conf: str = Field(default="", description="SLURM_CONF for the commands.")
        extra_args: list[str] = Field(default_factory=list, description="More sbatch flags.")
        ssh_host: str = Field(default="", description="Login node; empty: run commands here.")
        ssh_user: str = Field(default="")
        ssh_port: int = Field(default=22, ge=1, le=65535)
        ssh_key: SecretStr = Field(default=SecretStr(""), description="Private key (PEM).")
        ssh_known_hosts: str = Field(
            default="", description="known_hosts line(s) of the login node (else trust first)."
        )

    @property
    def cfg(self) -> SlurmCompute.Config:
        assert isinstance(self.config, SlurmCompute.Config)
        return self.config

    def _argv(self, command: str, keydir: Path) -> tuple[list[str], dict[str, str]]:
        cfg = self.cfg
        env = dict(os.environ)
        prefix = f"SLURM_CONF={shlex.quote(cfg.slurm_conf)} " if cfg.slurm_conf else ""
        if not cfg.ssh_host:
            if cfg.slurm_conf:
                env["SLURM_CONF"] = cfg.slurm_conf
            return ["sh", "-c", command], env
        ssh = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-p", str(cfg.ssh_port)]
        key = cfg.ssh_key.get_secret_value()
        if key:
            path = keydir / "key"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(key.strip() + "\n")
            ssh += ["-i", str(path), "-o", "IdentitiesOnly=yes"]
        if cfg.ssh_known_hosts:
            kh = keydir / "known_hosts"
            kh.write_text(cfg.ssh_known_hosts.strip() + "\n")
            ssh += ["-o", f"UserKnownHostsFile={kh}", "-o", "StrictHostKeyChecking=yes"]
        else:
            ssh += ["-o", "StrictHostKeyChecking=accept-new"]
        target = f"{cfg.ssh_user}@{cfg.ssh_host}" if cfg.ssh_user else cfg.ssh_host
        return [*ssh, target, prefix + "sh -c " + shlex.quote(command)], env

    def run(self, command: str, stdin: str = "", timeout: float = 60.0) -> str:
        """Run a shell command where Slurm is (here or on the login node); its stdout."""
        with tempfile.TemporaryDirectory(prefix="fh-slurm-") as keydir:
            argv, env = self._argv(command, Path(keydir))
            try:
                r = subprocess.run(
                    argv, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
                )
            except FileNotFoundError as exc:
                raise ComputeError(f"{argv[0]} is not installed here") from exc
            except subprocess.TimeoutExpired as exc:
                raise ComputeError(f"Slurm command timed out after {timeout:.0f} s") from exc
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise ComputeError(f"Slurm command failed: {msg[-1] if msg else r.returncode}")
        return r.stdout

    def test(self) -> None:
        out = self.run("sinfo -h -o '%P %a %D %c %m'")
        if not out.strip():
            raise ComputeError("sinfo shows no partitions")

    def capacity(self) -> Capacity:
        cpus = mem = 0
        gpus = 0
        for line in self.run("sinfo -h -N -o '%c %m %G'").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                cpus += int(parts[0])
                mem += int(parts[1]) if parts[1].isdigit() else 0
                if len(parts) > 2 and "gpu:" in parts[2]:
                    tail = parts[2].split("gpu:")[-1].split(":")[-1].split("(")[0]
                    gpus += int(tail) if tail.isdigit() else 0
        return Capacity(float(cpus), gpus, mem, None, ["Slurm queues jobs itself"])

    def script(self, launch: Launch) -> str:
        cfg = self.cfg
        res = launch.resources
        lines = [
            "#!/bin/sh",
            f"#SBATCH --job-name={launch.name or 'forgehub'}",
            f"#SBATCH --cpus-per-task={max(1, math.ceil(res.cpu))}",
            f"#SBATCH --time={max(1, math.ceil(res.time_limit_s / 60))}",
            f"#SBATCH --output={cfg.work_dir}/forgehub-%j.out",
        ]
        if res.memory_mb:
            lines.append(f"#SBATCH --mem={res.memory_mb}M")
        if res.gpu:
            lines.append(f"#SBATCH --gres=gpu:{res.gpu}")
        if cfg.partition:
            lines.append(f"#SBATCH --partition={cfg.partition}")
        if cfg.account:
            lines.append(f"#SBATCH --account={cfg.account}")
        lines.extend(f"#SBATCH {a}" for a in cfg.extra_args)
        run = [
            cfg.python,
            "-m",
            "forgehub.jobs.runner",
            "--server",
            launch.server_url,
            "--job",
            launch.job_id,
        ]
        lines.append("exec " + shlex.join(run))
        return "\n".join(lines) + "\n"

    def submit(self, launch: Launch) -> str:
        # the token comes on stdin, so it is never on a command line or in the script
        command = (
            "read -r FORGEHUB_JOB_TOKEN && export FORGEHUB_JOB_TOKEN && "
            "sbatch --parsable --export=ALL <<'FORGEHUB_EOF'\n"
            + self.script(launch)
            + "FORGEHUB_EOF\n"
        )
        out = self.run(command, stdin=launch.token + "\n").strip()
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise ComputeError(f"sbatch gave no job id: {out[:200]}")
        return job_id

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        if not handles:
            return {}
        data = json.loads(self.run("squeue --json"))
        seen = {}
        for j in data.get("jobs", []):
            jid = str(j.get("job_id"))
            if jid in handles:
                code = j.get("exit_code")
                if isinstance(code, dict):
                    code = code.get("return_code")
                seen[jid] = map_state(
                    str(j.get("job_state", "")),
                    str(j.get("state_reason", "")),
                    str(code) if code not in (None, 0, "0") else "",
                )
        for h in handles:
            if h not in seen:  # the controller forgot it (MinJobAge passed)
                seen[h] = BackendStatus(JobState.failed, "Slurm no longer knows this job")
        return seen

    def cancel(self, handle: str) -> None:
        if handle.isdigit():
            self.run(f"scancel {handle}")
