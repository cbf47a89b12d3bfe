"""The worker agent. It only makes outbound connections: it registers, long-polls for jobs that
fit its free resources, runs each with the job runner (in a thread; the module itself runs in a
child process group) and sends heartbeats. Leases on its jobs are renewed by the runner; if the
worker dies, its jobs' leases lapse and the server queues them again.

Stopping: the first SIGINT/SIGTERM stops claiming and lets running jobs finish; the second stops
at once (the jobs go back to the queue).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from forgehub import __version__
from forgehub.client import ApiClient, Patience, Unreachable
from forgehub.compute import Resources, gpus
from forgehub.errors import Conflict, ForgehubError, NotFound, Upstream
from forgehub.jobs import leftovers
from forgehub.jobs.runner import JobRun, cache_root, machine_cache

log = logging.getLogger("forgehub.worker")
# a worker waits out any server outage (until it is stopped)
PATIENT = Patience(float("inf"), 0.5, 10.0, retry_statuses=(500, 502, 503, 504))
HEARTBEAT_S = 5.0


@dataclass
class WorkerAgent:
    server: str
    token: str
    name: str = field(default_factory=socket.gethostname)
    labels: list[str] = field(default_factory=list)
    cpus: float = float(os.cpu_count() or 1)
    gpus: int | None = None  # None: the GPUs detected here; N: the first N of them
    memory_mb: int = 0
    shared: bool = False
    max_jobs: int = 0  # jobs at once (0: as many as the CPUs allow)
    poll_s: float = 20.0
    burst: bool = False  # exit once the queue is empty (tests, batch use)
    stop_after: int = 0  # exit after this many jobs (0: never)
    worker_id: str | None = None
    running: dict[str, tuple[JobRun, Resources]] = field(default_factory=dict)
    done: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.api = ApiClient(
            self.server, self.token, timeout=httpx.Timeout(self.poll_s + 15, connect=5.0)
        )
        self.runner_http = httpx.Client(
            timeout=httpx.Timeout(30.0, connect=5.0),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=16),
        )
        self.cache = machine_cache()
        found = gpus.machine_gpus()
        if self.gpus is not None:  # as many as asked: the detected ones, then unknown ones
            extra = [gpus.Gpu(i, "", "unknown", 0) for i in range(len(found), self.gpus)]
            found = (found + extra)[: self.gpus]
        self.devices = gpus.Devices(found)
        self.gpus = len(found)

    # -- server calls, patient through outages -----------------------------------------------

    def _post(self, path: str, body: Any = None) -> Any:
        """POST, waiting out server outages until the worker stops; 4xx answers raise their
        typed error, an outage that outlasts the worker raises ConnectionError."""
        try:
            return self.api.call(
                "POST",
                path,
                json=body,
                patience=PATIENT,
                stop=self.stopping.is_set,
                on_retry=lambda why, delay: log.warning("%s; retrying in %.0f s", why, delay),
            )
        except (Unreachable, Upstream) as exc:
            raise ConnectionError(str(exc)) from None

    def register(self) -> str:
        try:
            got = self._post(
                "/api/v1/workers",
                {
                    "name": self.name,
                    "labels": self.labels,
                    "cpus": self.cpus,
                    "gpus": self.gpus,
                    "gpu_models": [g.model for g in self.devices.gpus],
                    "gpu_memory_mb": [g.memory_mb for g in self.devices.gpus],
                    "memory_mb": self.memory_mb,
                    "shared": self.shared,
                    "version": __version__,
                },
            )
        except ForgehubError as exc:
            raise PermissionError(str(exc)) from None
        self.worker_id = str(got["id"])
        return self.worker_id

    # -- the loop -----------------------------------------------------------------------------

    def free(self) -> Resources:
        with self._lock:
            used = [res for _, res in self.running.values()]
        return Resources(
            cpu=max(self.cpus - sum(r.cpu for r in used), 0.001),
            gpu=len(self.devices.free()),
            memory_mb=max(self.memory_mb - sum(r.memory_mb for r in used), 0),
        )

    def slots_left(self) -> bool:
        with self._lock:
            n = len(self.running)
        limit = self.max_jobs or max(1, int(self.cpus))
        return n < limit and self.free().cpu > 0.001

    def run(self) -> int:
        reaped = leftovers.clean(cache_root() / "work")
        if reaped:
            log.info("cleaned up after %d job(s) a killed runner left: %s", len(reaped), reaped)
        self.register()
        log.info("worker %s (%s) connected to %s", self.name, self.worker_id, self.server)
        for gpu in self.devices.gpus:
            log.info("offering %s", gpu)
        beat = threading.Thread(target=self._heartbeats, daemon=True, name="worker-heartbeat")
        beat.start()
        try:
            while not self.stopping.is_set():
                if self.stop_after and self.done + len(self.running) >= self.stop_after:
                    break
                if not self.slots_left():
                    time.sleep(0.05)
                    continue
                # one job per claim: parallel jobs spread over idle workers (a pipeline's
                # branches, one on each) instead of filling the first worker that asks
                got = self.claim(0.0 if self.burst else self.poll_s)
                if got is None:
                    if self.burst and not self.running:
                        break
                    if self.burst:
                        time.sleep(0.1)
                    continue
                self.start(got)
        finally:
            self.stopping.set()
            for t in list(self._threads):
                t.join()
            self._unregister()
        return 0

    def claim(self, wait: float) -> dict[str, Any] | None:
        try:
            got: dict[str, Any] | None = self._post(
                f"/api/v1/workers/{self.worker_id}/claim",
                {
                    "free": self.free().model_dump(),
                    "free_gpu_models": [g.model for g in self.devices.free()],
                    "wait": wait,
                    # its runner runs here: the claim starts it and answers with its spec
                    "start": {"host": socket.gethostname(), "pid": os.getpid()},
                },
            )
        except ConnectionError:
            return None
        except (NotFound, Conflict) as exc:
            log.warning("the server forgot this worker (%s); registering again", exc)
            self.register()
            return None
        except ForgehubError as exc:
            raise PermissionError(str(exc)) from None
        return got  # None: nothing to do (204)

    def start(self, got: dict[str, Any]) -> None:
        job_id = got["job_id"]
        res = Resources.model_validate(got.get("resources") or {})
        held = self.devices.take(job_id, res.gpu, res.gpu_model) or []
        if len(held) < res.gpu:  # cannot happen: claims ask with what is free
            log.error("job %s needs %d GPU(s) and none are free", job_id, res.gpu)
        run = JobRun(
            self.server,
            job_id,
            got["token"],
            self.cache,
            self.runner_http,
            gpus.visible(held),
            started=got.get("spec"),  # a server that started it with the claim
        )
        if held:
            log.info("job %s gets GPU(s) %s", job_id, gpus.visible(held))
        with self._lock:
            self.running[job_id] = (run, res)
        log.info("running job %s (attempt %s)", job_id, got.get("attempt"))

        def work() -> None:
            try:
                code = run.run()
                log.info("job %s ended (runner exit %s)", job_id, code)
            finally:
                self.devices.give(job_id)
                with self._lock:
                    self.running.pop(job_id, None)
                    self.done += 1

        t = threading.Thread(target=work, name=f"job-{job_id[:8]}")
        self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _heartbeats(self) -> None:
        while not self.stopping.wait(HEARTBEAT_S):
            try:
                self.api.send("POST", f"/api/v1/workers/{self.worker_id}/heartbeat", json={})
            except ForgehubError:
                pass  # the next one, or the claim loop, tells

    def _unregister(self) -> None:
        try:
            self.api.send("DELETE", f"/api/v1/workers/{self.worker_id}")
        except ForgehubError:
            pass
        self.api.close()
        self.runner_http.close()

    def install_signals(self) -> None:
        def handler(signum: int, _frame: Any) -> None:
            if self.stopping.is_set():
                log.warning("stopping now; running jobs go back to the queue")
                os._exit(130)
            log.warning("finishing %d running job(s); signal again to stop now", len(self.running))
            self.stopping.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
