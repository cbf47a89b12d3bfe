"""``ray``: jobs go to an existing Ray cluster through the Ray Jobs API (its REST interface,
so the server needs no Ray installed). The entrypoint is ``forgehub job run``; resources map to
entrypoint CPUs, GPUs and memory. Status comes from the Jobs API and ``stop`` ends a job.

The job token rides in the job's runtime environment, which the cluster's dashboard shows to
whoever can reach it: the token is scoped to this attempt of this job and dies with it.
"""

from __future__ import annotations

import functools
import re
import shlex
import sys
from typing import Any

import httpx
from pydantic import Field, SecretStr

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
from forgehub.urls import url_host

RESOURCE_RE = re.compile(r"([\d.]+)\s*(GiB)?/([\d.]+)\s*(GiB)?\s+(CPU|GPU|memory)\b")


def map_status(status: str, message: str = "") -> BackendStatus:
    why = f"Ray: {status}" + (f" ({message})" if message else "")
    if status == "PENDING":
        return BackendStatus(None, why)
    if status == "RUNNING":
        return BackendStatus(JobState.running, why)
    if status == "STOPPED":
        return BackendStatus(JobState.cancelled, why)
    if status == "SUCCEEDED":
        return BackendStatus(JobState.failed, "the Ray job ended without the runner reporting")
    return BackendStatus(JobState.failed, why)


class RayCompute(ComputeAdapter):
    kind = "ray"
    queues_itself = True

    @classmethod
    def hosts(cls, config: dict[str, Any]) -> list[str]:
        return url_host(config.get("address"))

    class Config(ComputeConfig):
        address: str = Field(
            default="http://127.0.0.1:8265", description="The Ray dashboard (Jobs API) URL."
        )
        python: str = Field(
            default_factory=lambda: sys.executable,
            description="Python with forgehub installed, on the Ray nodes.",
        )
        server_url: str = Field(default="", description="The server URL, as Ray nodes reach it.")
        token: SecretStr = Field(
            default=SecretStr(""), description="Bearer token, if the dashboard is behind a proxy."
        )

    @property
    def cfg(self) -> RayCompute.Config:
        assert isinstance(self.config, RayCompute.Config)
        return self.config

    @functools.cached_property
    def http(self) -> httpx.Client:
        """One client (and its connections) for the adapter's life: no TLS set-up or new
        connection per call on the way from submit to Ray's answer."""
        headers = {}
        if self.cfg.token.get_secret_value():
            headers["Authorization"] = f"Bearer {self.cfg.token.get_secret_value()}"
        address = self.cfg.address.rstrip("/")
        return httpx.Client(
            base_url=address,
            headers=headers,
            timeout=30,
            verify=not address.startswith("http://"),  # no CA bundle to load for plain HTTP
        )

    def _call(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            r = self.http.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise ComputeError(f"cannot reach Ray at {self.cfg.address}: {exc}") from exc
        if r.status_code in (401, 403):
            raise ComputeError(f"Ray at {self.cfg.address} refused the credentials")
        return r

    def test(self) -> None:
        r = self._call("GET", "/api/version")
        if r.status_code != 200 or "ray_version" not in r.text:
            raise ComputeError(f"{self.cfg.address} does not look like a Ray dashboard")

    def capacity(self) -> Capacity:
        r = self._call("GET", "/api/cluster_status")
        text = str(r.json().get("data", {}).get("autoscalingStatus", "")) if r.is_success else ""
        total: dict[str, float] = {}
        for m in RESOURCE_RE.finditer(text):
            total[m.group(5)] = float(m.group(3))
        return Capacity(
            total.get("CPU", 0.0),
            int(total.get("GPU", 0)),
            int(total.get("memory", 0) * 1024),
            None,
            ["Ray queues jobs itself"],
        )

    def refuses(self, res: Resources) -> str | None:
        have = self.capacity().gpus
        if res.gpu > have:
            return f"the Ray cluster has {have} GPU(s); the job needs {res.gpu}"
        return None

    def submit(self, launch: Launch) -> str:
        res = launch.resources
        run = [self.cfg.python, "-m", "forgehub.jobs.runner"]
        run += ["--server", launch.server_url, "--job", launch.job_id]
        body: dict[str, object] = {
            "entrypoint": shlex.join(run),
            "submission_id": f"forgehub-{launch.job_id}-{launch.attempt}",
            "runtime_env": {"env_vars": {"FORGEHUB_JOB_TOKEN": launch.token}},
            "entrypoint_num_cpus": res.cpu,
            "metadata": {"forgehub_job": launch.job_id, "name": launch.name},
        }
        if res.gpu:
            body["entrypoint_num_gpus"] = res.gpu
            if res.gpu_model:  # Ray labels each node with its GPUs' accelerator_type
                body["entrypoint_resources"] = {f"accelerator_type:{res.gpu_model}": 0.001}
        if res.memory_mb:
            body["entrypoint_memory"] = res.memory_mb * 1024 * 1024
        r = self._call("POST", "/api/jobs/", json=body)
        if r.status_code >= 400:
            raise ComputeError(f"Ray refused the job: {r.text[:300]}")
        return str(r.json()["submission_id"])

    def status(self, handles: list[str]) -> dict[str, BackendStatus]:
        out = {}
        for h in handles:
            r = self._call("GET", f"/api/jobs/{h}")
            if r.status_code == 404:
                out[h] = BackendStatus(JobState.failed, "Ray no longer knows this job", lost=True)
                continue
            if r.status_code >= 400:
                raise ComputeError(f"Ray status failed: {r.status_code}")
            data = r.json()
            st = map_status(str(data.get("status")), str(data.get("message") or ""))
            if data.get("status") == "FAILED":
                tail = self.logs_tail(h)
                if tail:
                    st = BackendStatus(st.state, f"{st.reason}; last log line: {tail}", st.lost)
            out[h] = st
        return out

    def logs_tail(self, handle: str) -> str:
        """The last line of a Ray job's own log (what the runner could not report itself)."""
        r = self._call("GET", f"/api/jobs/{handle}/logs")
        if not r.is_success:
            return ""
        lines = [ln for ln in str(r.json().get("logs", "")).splitlines() if ln.strip()]
        return lines[-1][:300] if lines else ""

    def cancel(self, handle: str) -> None:
        self._call("POST", f"/api/jobs/{handle}/stop")
