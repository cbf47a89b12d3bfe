"""``slurm``: jobs go to a Slurm cluster with ``sbatch``, locally or on a login node over SSH.

The batch script runs ``forgehub job run``; resources map to ``--cpus-per-task``, ``--mem``,
``--gres=gpu[:MODEL]:N``, ``--tmp`` and ``--time``. The job token travels on sbatch's standard
input into its environment (``--export``), never on a command line. Jobs are followed with
``squeue --json`` and stopped with ``scancel``; Slurm's states map onto forgehub's, with the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator

from forgehub.compute.base import (
    BackendStatus,
    Capacity,
    ComputeAdapter,
    ComputeConfig,
    ComputeError,
    Launch,
    Resources,
)
from forgehub.states import JobState

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


# Every value that ends up in a command line or the batch script is checked against a strict
# pattern: no newlines, no quotes, no shell syntax. Commands are argv lists; only over SSH are
# they joined into one remote command line, with every word quoted.
SLURM_NAME = r"^[A-Za-z0-9_.+-]{0,64}$"  # partition, account
ABS_PATH = r"^(/[A-Za-z0-9_.+@-]+)*/?$"  # an absolute path of plain characters
HOST = r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$|^$"
SSH_USER = r"^[a-z_][a-z0-9_.-]{0,31}$|^$"
SBATCH_FLAG = re.compile(r"^--[a-z][a-z-]{0,40}(=[A-Za-z0-9_.,:=/@+%-]{1,200})?$")
KNOWN_HOSTS = re.compile(r"^[A-Za-z0-9_.,:\[\]@*|=+/ -]+$")


class SlurmCompute(ComputeAdapter):
    kind = "slurm"
    queues_itself = True

    class Config(ComputeConfig):
        partition: str = Field(
            default="", pattern=SLURM_NAME, description="--partition (empty: the default)."
        )
        account: str = Field(default="", pattern=SLURM_NAME, description="--account.")
        python: str = Field(
            default_factory=lambda: sys.executable,
            pattern=ABS_PATH,
            min_length=1,
            description="Python with forgehub installed, on the cluster nodes (absolute path).",
        )
        server_url: str = Field(
            default="",
            pattern=r"^$|^https?://[A-Za-z0-9_.:\[\]-]+(/[A-Za-z0-9_./-]*)?$",
            description="The server URL, as nodes reach it.",
        )
        work_dir: str = Field(
            default="/tmp",
            pattern=ABS_PATH,
            min_length=1,
            description="Where Slurm writes job output (absolute path).",
        )
        slurm_conf: str = Field(
            default="", pattern=r"^$|" + ABS_PATH, description="SLURM_CONF for the commands."
        )
        extra_args: list[str] = Field(
            default_factory=list,
            max_length=32,
            description="More sbatch flags, each --name or --name=value.",
        )
        ssh_host: str = Field(
            default="", pattern=HOST, description="Login node; empty: run commands here."
        )
        ssh_user: str = Field(default="", pattern=SSH_USER)
        ssh_port: int = Field(default=22, ge=1, le=65535)
        ssh_key: SecretStr = Field(default=SecretStr(""), description="Private key (PEM).")
        ssh_known_hosts: str = Field(
            default="",
            max_length=16384,
            description="known_hosts line(s) of the login node (else trust first).",
        )

        @field_validator("extra_args")
        @classmethod
        def _flags(cls, v: list[str]) -> list[str]:
            for a in v:
                if not SBATCH_FLAG.match(a):
                    raise ValueError(
                        f"{a!r} is not an sbatch flag of the form --name or --name=value "
                        "(letters, digits and _.,:=/@+%- only)"
                    )
            return v

        @field_validator("ssh_known_hosts")
        @classmethod
        def _known_hosts(cls, v: str) -> str:
            for line in v.strip().splitlines():
                if line and not KNOWN_HOSTS.match(line):
                    raise ValueError("known_hosts lines hold host names, a key type and a key")
            return v

    @classmethod
    def runs_on_server(cls, config: dict[str, Any]) -> bool:
        return not config.get("ssh_host")  # sbatch here: the python it names runs as the server

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        host = config.get("ssh_host")
        return [host] if isinstance(host, str) and host else []

    @property
    def cfg(self) -> SlurmCompute.Config:
        assert isinstance(self.config, SlurmCompute.Config)
        return self.config

    def _argv(self, argv: list[str], keydir: Path) -> tuple[list[str], dict[str, str]]:
        """``argv`` as run here, or over SSH on the login node (one quoted command line)."""
        cfg = self.cfg
        env = dict(os.environ)
        if not cfg.ssh_host:
            if cfg.slurm_conf:
                env["SLURM_CONF"] = cfg.slurm_conf
            return argv, env
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
        remote = shlex.join(argv)
        if cfg.slurm_conf:
            remote = "SLURM_CONF=" + shlex.quote(cfg.slurm_conf) + " " + remote
        return [*ssh, "--", target, remote], env

    def run(self, argv: list[str], stdin: str = "", timeout: float = 60.0) -> str:
        """Run a Slurm command (an argv list) where Slurm is, here or on the login node."""
        with tempfile.TemporaryDirectory(prefix="fh-slurm-") as keydir:
            full, env = self._argv(argv, Path(keydir))
            try:
                r = subprocess.run(
                    full, input=stdin, capture_output=True, text=True, env=env, timeout=timeout
                )
            except FileNotFoundError as exc:
                raise ComputeError(f"{full[0]} is not installed here") from exc
            except subprocess.TimeoutExpired as exc:
                raise ComputeError(f"Slurm command timed out after {timeout:.0f} s") from exc
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise ComputeError(f"Slurm command failed: {msg[-1] if msg else r.returncode}")
        return r.stdout

    def test(self) -> None:
        out = self.run(["sinfo", "-h", "-o", "%P %a %D %c %m"])
        if not out.strip():
            raise ComputeError("sinfo shows no partitions")

    def capacity(self) -> Capacity:
        cpus = mem = 0
        gpus = 0
        for line in self.run(["sinfo", "-h", "-N", "-o", "%c %m %G"]).splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit():
                cpus += int(parts[0])
                mem += int(parts[1]) if parts[1].isdigit() else 0
                if len(parts) > 2:
                    gpus += gres_gpus(parts[2], None)
        return Capacity(float(cpus), gpus, mem, None, ["Slurm queues jobs itself"])

    def refuses(self, res: Resources) -> str | None:
        """A GPU job where no node (of the partition) has that many GPUs of that type in its
        GRES: refused up front, not left pending for ever or failed late."""
        if not res.gpu:
            return None
        argv = ["sinfo", "-h", "-N", "-o", "%G"]
        if self.cfg.partition:
            argv += ["-p", self.cfg.partition]
        where = f"partition {self.cfg.partition!r}" if self.cfg.partition else "the cluster"
        nodes = self.run(argv).splitlines()
        best = max((gres_gpus(line, res.gpu_model) for line in nodes), default=0)
        if best >= res.gpu:
            return None
        if not any(gres_gpus(line, None) for line in nodes):
            return f"Slurm {where} has no GPUs (no GRES gpu is configured on its nodes)"
        kind = f" {res.gpu_model}" if res.gpu_model else ""
        return f"Slurm {where} has at most {best}{kind} GPU(s) a node; the job needs {res.gpu}"

    def script(self, launch: Launch) -> str:
        cfg = self.cfg
        res = launch.resources
        lines = [
            "#!/bin/sh",
            f"#SBATCH --job-name={_plain(launch.name) or 'forgehub'}",
            f"#SBATCH --cpus-per-task={max(1, math.ceil(res.cpu))}",
            f"#SBATCH --time={max(1, math.ceil(res.time_limit_s / 60))}",
            f"#SBATCH --output={cfg.work_dir}/forgehub-%j.out",
        ]
        if res.memory_mb:
            lines.append(f"#SBATCH --mem={res.memory_mb}M")
        if res.gpu:
            model = f"{res.gpu_model}:" if res.gpu_model else ""
            lines.append(f"#SBATCH --gres=gpu:{model}{res.gpu}")
        if res.disk_mb:
            lines.append(f"#SBATCH --tmp={res.disk_mb}M")
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
        # The script goes to sbatch on stdin. The job token is never on a command line or in
        # the script: here it is in sbatch's environment (--export=ALL passes it on); over SSH
        # it is the first line of stdin, which a fixed remote shell line reads into the
        # environment before sbatch reads the rest.
        script = self.script(launch)
        sbatch = ["sbatch", "--parsable", "--export=ALL"]
        if self.cfg.ssh_host:
            argv = ["sh", "-c", READ_TOKEN_THEN_SBATCH]
            out = self.run(argv, stdin=launch.token + "\n" + script).strip()
        else:
            out = self._sbatch_here(sbatch, script, launch.token)
        job_id = out.split(";")[0]
        if not job_id.isdigit():
            raise ComputeError(f"sbatch gave no job id: {out[:200]}")
        return job_id

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        if not handles:
            return {}
        data = json.loads(self.run(["squeue", "--json"]))
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
            self.run(["scancel", handle])

    def _sbatch_here(self, argv: list[str], script: str, token: str) -> str:
        env = dict(os.environ, FORGEHUB_JOB_TOKEN=token)
        if self.cfg.slurm_conf:
            env["SLURM_CONF"] = self.cfg.slurm_conf
        try:
            r = subprocess.run(
                argv, input=script, capture_output=True, text=True, env=env, timeout=60.0
            )
        except FileNotFoundError as exc:
            raise ComputeError("sbatch is not installed here") from exc
        except subprocess.TimeoutExpired as exc:
            raise ComputeError("sbatch timed out after 60 s") from exc
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise ComputeError(f"sbatch failed: {msg[-1] if msg else r.returncode}")
        return r.stdout.strip()


def gres_gpus(gres: str, model: str | None) -> int:
    """GPUs of ``model`` (any when None) in one node's GRES, as sinfo's %G prints it:
    ``gpu:a100:4(S:0-1),gpu:v100:2`` or ``gpu:2`` or ``(null)``."""
    total = 0
    for item in gres.strip().split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] != "gpu" or not parts[-1].isdigit():
            continue
        kind = parts[1] if len(parts) == 3 else ""
        if model is None or kind.lower() == model.lower():
            total += int(parts[-1])
    return total


# a constant: no user value is in it
READ_TOKEN_THEN_SBATCH = (
    "read -r FORGEHUB_JOB_TOKEN && export FORGEHUB_JOB_TOKEN && exec sbatch --parsable --export=ALL"
)


def _plain(name: str) -> str:
    """A job name safe in a #SBATCH line."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:64]
