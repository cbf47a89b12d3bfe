"""``sciserver``: jobs run as SciServer-Compute (JOBM) Docker jobs.

Each attempt is one JOBM shell job in a chosen compute domain and image: the command runs
``forgehub job run``, so the image needs Python with forgehub installed, and the job must reach
the forgehub server over HTTPS. JOBM's status bit flags map onto job states; cancel is JOBM's
cancel; when a job fails before its runner could say why, the last line of its ``stderr.txt`` /
``stdout.txt`` in the results folder (on the Files service) becomes the reason.

The job token travels in the command's environment (``export FORGEHUB_JOB_TOKEN=…; exec …``):
JOBM keeps the command with the job, visible to the SciServer account that owns it, and writes
nothing of it to the results folder. The token is scoped to this attempt and dies with it.
"""

from __future__ import annotations

import functools
import shlex
from typing import Any
from urllib.parse import quote

import httpx
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
from forgehub.storage.sciserver import no_dot_segments
from forgehub.urls import url_host

PENDING, QUEUED, ACCEPTED, STARTED, FINISHED, SUCCESS, ERROR, CANCELED = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
)
FILES_PATH = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.@-]+/[A-Za-z0-9_.@-]+(/[A-Za-z0-9_.@-]+)*$"


def map_status(status: int, messages: list[Any]) -> BackendStatus:
    """JOBM's status flags as forgehub sees them; ``None`` means still waiting to start."""
    said = "; ".join(
        str(m.get("content", m)) if isinstance(m, dict) else str(m) for m in messages[-3:]
    )
    why = f"SciServer: status {status}" + (f" ({said})" if said else "")
    if status & CANCELED:
        return BackendStatus(JobState.cancelled, why)
    if status & ERROR:
        return BackendStatus(JobState.failed, f"the SciServer job failed ({said or status})")
    if status & (SUCCESS | FINISHED):  # the runner reports its own end: this is too early
        return BackendStatus(
            JobState.failed, "the SciServer job ended without the runner reporting"
        )
    if status & STARTED:
        return BackendStatus(JobState.running, why)
    return BackendStatus(None, why)


class SciServerCompute(ComputeAdapter):
    kind = "sciserver"
    queues_itself = True

    class Config(ComputeConfig):
        racm_url: str = Field(
            default="https://apps.sciserver.org/racm", description="The RACM API (JOBM) URL."
        )
        files_url: str = Field(
            default="https://apps.sciserver.org/fileservice",
            description="The Files service URL (where the results folders are).",
        )
        token: SecretStr = Field(description="SciServer token (X-Auth-Token).")
        domain: str = Field(
            max_length=200, description="Docker compute domain name, e.g. 'Small Jobs Domain'."
        )
        image: str = Field(
            max_length=200, description="Compute image, with Python and forgehub installed."
        )
        python: str = Field(
            default="python3",
            pattern=r"^[A-Za-z0-9_./+-]+$",
            description="Python with forgehub, inside the image.",
        )
        server_url: str = Field(default="", description="The server URL, as the jobs reach it.")
        results_folder: str = Field(
            pattern=FILES_PATH,
            description="Where JOBM writes each job's output: topVolume/owner/userVolume/folder.",
        )
        data_volumes: list[str] = Field(
            default_factory=list, max_length=32, description="Data volumes to mount, by name."
        )
        gpus: int = Field(
            default=0, ge=0, le=64, description="GPUs a job gets in this domain (0: CPU only)."
        )

        @field_validator("results_folder")
        @classmethod
        def _plain(cls, v: str) -> str:
            return no_dot_segments(v)

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("racm_url")) + url_host(config.get("files_url"))

    @property
    def cfg(self) -> SciServerCompute.Config:
        assert isinstance(self.config, SciServerCompute.Config)
        return self.config

    @functools.cached_property
    def http(self) -> httpx.Client:
        headers = {"X-Auth-Token": self.cfg.token.get_secret_value()}
        return httpx.Client(headers=headers, timeout=30, follow_redirects=False)

    def _call(self, method: str, url: str, **kw: Any) -> httpx.Response:
        try:
            r = self.http.request(method, url, **kw)
        except httpx.HTTPError as exc:
            raise ComputeError(f"cannot reach SciServer at {url_host(url)}: {exc}") from exc
        if r.status_code in (401, 403):
            raise ComputeError(f"SciServer refused the token ({r.status_code})")
        return r

    def _jobm(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._call(method, f"{self.cfg.racm_url.rstrip('/')}/jobm/rest/{path}", **kw)

    def _domain(self) -> dict[str, Any]:
        r = self._jobm("GET", "computedomains", params={"batch": "true", "interactive": "false"})
        if r.status_code >= 400:
            raise ComputeError(f"SciServer compute domains: {r.status_code} {r.text[:200]}")
        domains = r.json()
        for d in domains:
            if d.get("name") == self.cfg.domain:
                images = [i.get("name") for i in d.get("images") or []]
                if self.cfg.image not in images:
                    raise ComputeError(
                        f"image {self.cfg.image!r} is not in domain {self.cfg.domain!r} "
                        f"(it has: {', '.join(map(str, images)) or 'none'})"
                    )
                return dict(d)
        names = ", ".join(str(d.get("name")) for d in domains) or "none"
        raise ComputeError(f"no compute domain {self.cfg.domain!r} (yours: {names})")

    @functools.cached_property
    def endpoint(self) -> str:
        """The domain's dockerComputeEndpoint, asked once per adapter (the dispatcher keeps
        one a connection), not before every job."""
        return str(self._domain().get("apiEndpoint"))

    def test(self) -> None:
        self._domain()

    def capacity(self) -> Capacity:
        return Capacity(0.0, self.cfg.gpus, 0, None, ["SciServer queues jobs itself"])

    def refuses(self, res: Resources) -> str | None:
        if res.gpu > self.cfg.gpus:
            return (
                f"SciServer domain {self.cfg.domain!r} gives jobs {self.cfg.gpus} GPU(s) "
                f"(the connection's 'gpus'), the job needs {res.gpu}"
            )
        return None

    def command(self, launch: Launch) -> str:
        run = [self.cfg.python, "-m", "forgehub.jobs.runner"]
        run += ["--server", launch.server_url, "--job", launch.job_id]
        token = shlex.quote(launch.token)
        return f"export FORGEHUB_JOB_TOKEN={token}; exec {shlex.join(run)}"

    def submit(self, launch: Launch) -> str:
        body = {
            "command": self.command(launch),
            "submitterDID": launch.name,
            "dockerComputeEndpoint": self.endpoint,
            "dockerImageName": self.cfg.image,
            "volumeContainers": [{"name": v} for v in self.cfg.data_volumes],
            "userVolumes": [],
            "resultsFolderURI": f"{self.cfg.results_folder}/{launch.job_id}-{launch.attempt}",
        }
        r = self._jobm("POST", "jobs/docker", json=body)
        if r.status_code >= 400:
            raise ComputeError(f"SciServer refused the job: {r.status_code} {r.text[:300]}")
        job_id = r.json().get("id")
        if not isinstance(job_id, int):
            raise ComputeError(f"SciServer gave no job id: {r.text[:200]}")
        return str(job_id)

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        out = {}
        for h in handles:
            r = self._jobm("GET", f"jobs/{quote(h)}")
            if r.status_code == 404:
                out[h] = BackendStatus(
                    JobState.failed, "SciServer no longer knows this job", lost=True
                )
                continue
            if r.status_code >= 400:
                raise ComputeError(f"SciServer job status: {r.status_code}")
            data = r.json()
            st = map_status(int(data.get("status") or 0), list(data.get("messages") or []))
            if st.state == JobState.failed:
                tail = self.logs_tail(str(data.get("resultsFolderURI") or ""))
                if tail:
                    st = BackendStatus(st.state, f"{st.reason}; last log line: {tail}", st.lost)
            out[h] = st
        return out

    def logs_tail(self, folder: str) -> str:
        """The last line the job wrote to its results folder (stderr first)."""
        if not folder:
            return ""
        base = self.cfg.files_url.rstrip("/")
        for name in ("stderr.txt", "stdout.txt"):
            r = self._call("GET", f"{base}/api/file/{quote(folder)}/{name}")
            if r.is_success:
                lines = [ln for ln in r.text[-4000:].splitlines() if ln.strip()]
                if lines:
                    return lines[-1][:300]
        return ""

    def cancel(self, handle: str) -> None:
        if handle.isdigit():
            self._jobm("POST", f"jobs/{handle}/cancel")
