"""The server's job loop: starts queued jobs on push back ends, follows them, reaps lost ones.

It runs in one daemon thread of the server, wakes when a job is submitted (or every half
second), and does four things each round, each in its own short transaction. Whatever talks to
a back end that may be slow or unreachable (a login node over SSH, a Ray head) runs in that
connection's own *lane* — one thread at a time per connection, in a small pool — so one user's
unreachable cluster never holds up anyone else's jobs:

1. start queued jobs on ``local`` (up to its slots), ``slurm`` and ``ray`` (their queues);
2. ask those back ends how their jobs are doing (every few seconds) and record what the runner
   cannot: a job that never started, was killed for time or memory, or lost its node;
3. pass cancels on to the back end, and fail jobs past their time limit;
4. re-queue (or fail) jobs whose lease lapsed: their worker or runner is gone.

Every server runs this loop; each duty in it (``dispatcher``: 1–3 but time limits; ``reaper``:
time limits and leases; ``deployments``; ``autoscaler``; ``pipelines``) is done by one server at a
time, the one holding it (:class:`forgehub.db.coordination.Duties`). A wake-up published on any
server (a submit, a report, a cancel) reaches the holder through the :class:`Bus`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select

from forgehub.compute import (
    ComputeAdapter,
    ComputeError,
    Launch,
    Resources,
    gpus,
    kinds,
    kinds_with,
)
from forgehub.compute.local import held_gpus
from forgehub.db import Database
from forgehub.db.coordination import Bus, Duties
from forgehub.db.models import ComputeConnection, Job, JobState, utcnow
from forgehub.jobs import service
from forgehub.jobs.states import lose, transition
from forgehub.secrets import SecretBox

log = logging.getLogger("forgehub.jobs")
STATUS_EVERY_S = 2.0
MIN_ROUND_S = 0.1  # in a burst, rounds at most 10 times a second
LANES = 8  # connections served at once; each connection's work runs one at a time
REAP_EVERY_S = 1.0  # time limits and leases are checked once a second
GRACE_S = 15.0  # a runner's own report may be in flight when its back end says it ended
DUTIES = ("dispatcher", "reaper", "deployments", "autoscaler", "pipelines")


def pushed() -> list[str]:
    """Kinds whose jobs the server starts (all but the pull ones: workers claim theirs)."""
    pull = set(kinds_with("pull"))
    return sorted(k for k in kinds() if k not in pull)


class Dispatcher:
    def __init__(
        self,
        db: Database,
        box: SecretBox,
        server_url: str,
        data_dir: Path,
        local_slots: int,
        lease_s: float,
    ) -> None:
        self.db = db
        self.box = box
        # deployment id → when the proxy last forwarded a request to it (time.time())
        self.last_request: dict[str, float] = {}
        self.pools: dict[str, Any] = {}  # scaled deployment id → its Pool (the proxy's counts)
        self._scalers: dict[str, Any] = {}
        self.server_url = server_url
        self.data_dir = data_dir
        self.local_slots = local_slots
        self.lease_s = lease_s
        self.wake = threading.Event()
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None
        self._adapters: dict[str, ComputeAdapter] = {}
        self._cancelled: set[str] = set()
        self._ended_at: dict[str, float] = {}
        self._last_status = 0.0
        self._last_reap = 0.0
        self.listeners: list[Any] = []  # callables told when jobs may be claimable
        self._pool = ThreadPoolExecutor(max_workers=LANES, thread_name_prefix="forgehub-compute")
        self._lanes: set[tuple[str, str]] = set()  # (what, connection id) with work in flight
        self._lanes_lock = threading.Lock()
        self.pipeline_context: Any = None  # set by the server: () -> pipelines.runs.Context
        self.duties = Duties(db.url, data_dir / "run")
        self.bus = Bus(db.url)
        self.bus.subscribe("jobs", lambda _key: self.woken())
        self._heard("load", lambda pool, server, report: pool.merge(server, report))
        self._heard("used", self._use_heard)
        self._heard("sample", lambda pool, _server, report: pool.series.append(report["sample"]))
        self._use_sent: dict[str, float] = {}  # deployment → the last use told the others
        self.server_id = f"{socket.gethostname()}:{os.getpid()}"  # in reports and /readyz
        self._reported = 0.0
        self._reaping = False  # holds the reaper duty (a new holder first grants grace)

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.bus.start()
        self.thread = threading.Thread(target=self._loop, name="forgehub-jobs", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.wake.set()
        if self.thread is not None:
            self.thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.duties.close()
        self.bus.stop()

    def in_lane(self, what: str, conn_id: str, fn: Any, *args: Any) -> bool:
        """Run ``fn(*args)`` in the connection's lane, unless its lane is busy (then the next
        round tries again). False if it was not started."""
        lane = (what, conn_id)
        with self._lanes_lock:
            if lane in self._lanes or self.stopping.is_set():
                return False
            self._lanes.add(lane)

        def run() -> None:
            try:
                fn(*args)
            except Exception:  # noqa: BLE001 - a lane must not die silently
                log.exception("job dispatcher: %s on connection %s failed", what, conn_id)
            finally:
                with self._lanes_lock:
                    self._lanes.discard(lane)
                self.wake.set()

        self._pool.submit(run)
        return True

    def grace_leases(self) -> None:
        """After a restart, give running jobs two leases to reconnect before reaping them."""
        until = utcnow() + timedelta(seconds=2 * self.lease_s)
        with self.db.session() as s:
            for job in s.scalars(select(Job).where(Job.state.in_(service.ACTIVE))):
                if job.lease_expires_at is not None and job.lease_expires_at < until:
                    job.lease_expires_at = until

    def _loop(self) -> None:
        while not self.stopping.is_set():
            self.wake.wait(0.5)
            self.wake.clear()
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must survive a bad round
                log.exception("job dispatcher round failed")
            # a burst of submits and reports wakes it hundreds of times a second: when more
            # came in during this round, what comes in the next moment joins the next round
            # (one job after another still starts at once)
            if self.wake.is_set():
                self.stopping.wait(MIN_ROUND_S)

    def tick(self) -> None:
        held = {duty for duty in DUTIES if self.duties.holds(duty)}
        if time.monotonic() - self._last_status >= STATUS_EVERY_S:
            self._last_status = time.monotonic()
            if "dispatcher" in held:
                self.follow()
            if "deployments" in held:
                self.sync_deployments()
            if "reaper" in held:
                self.reap_trainings()
        if "autoscaler" in held:
            self.autoscale()
        else:
            self.report_loads()
        self.report_use()
        if "pipelines" in held:
            self.advance_pipelines()
        if "dispatcher" in held:
            self.start_queued()  # what the autoscaler and pipelines queued starts in this round
        if "reaper" in held and not self._reaping:
            self.grace_leases()  # after a restart or a takeover: two leases to report
        self._reaping = "reaper" in held
        if held & {"dispatcher", "reaper"}:
            self.enforce(cancels="dispatcher" in held, reap="reaper" in held)

    def reap_trainings(self) -> None:
        """Model API trainings whose server died (their lease lapsed) fail."""
        from forgehub.modelapi.trainings import reap_lapsed

        with self.db.session() as s:
            if n := reap_lapsed(s):
                log.warning("%d model API training(s) lost with their server: failed", n)

    def report_loads(self) -> None:
        """Not the autoscaler: tell it what this server's proxy counts (a few times a second,
        and at once while a request waits for a first replica)."""
        from forgehub.deployments import scaling

        if not self.bus.postgres:
            return
        now = time.monotonic()
        waiting = any(p.waiting for p in list(self.pools.values()))
        if now - self._reported < scaling.REPORT_S and not waiting:
            return
        self._reported = now
        for dep_id, pool in list(self.pools.items()):
            if pool.busy():
                self._tell("load", dep_id, **pool.report())

    def report_use(self) -> None:
        """Tell the other servers when this one's proxy last forwarded to each deployment
        (at most once a second each): an idle stop counts from the last use anywhere."""
        if not self.bus.postgres:
            return
        for dep_id, at in list(self.last_request.items()):
            if at - self._use_sent.get(dep_id, 0.0) >= 1.0:
                self._use_sent[dep_id] = at
                self._tell("used", dep_id, t=at)

    def _tell(self, topic: str, dep_id: str, **fields: Any) -> None:
        """A report about a deployment, for the other servers only."""
        report = {"d": dep_id, "s": self.server_id, **fields}
        self.bus.publish(topic, json.dumps(report, separators=(",", ":")), here=False)

    def _heard(self, topic: str, fn: Any) -> None:
        """Subscribe ``fn(pool, server, report)`` to another server's reports on ``topic``."""
        from forgehub.deployments import scaling

        def heard(payload: str) -> None:
            try:
                report = json.loads(payload)
                dep_id, server = str(report.pop("d")), str(report.pop("s"))
                fn(scaling.pool(self.pools, dep_id), server, report)
            except (ValueError, KeyError, TypeError, AttributeError):
                return  # not a report (the bus's catch-up wake-up has none)

        self.bus.subscribe(topic, heard)

    def _use_heard(self, pool: Any, _server: str, report: dict[str, Any]) -> None:
        at = float(report["t"])
        if at > self.last_request.get(pool.dep_id, 0.0):
            self.last_request[pool.dep_id] = at
            self._use_sent[pool.dep_id] = max(self._use_sent.get(pool.dep_id, 0.0), at)

    def autoscale(self) -> None:
        """Scaled deployments' replicas follow the load the proxy counts."""
        from forgehub.db.models import Deployment
        from forgehub.deployments import scaling
        from forgehub.deployments import service as deployments

        with self.db.session() as s:
            ids = [
                d.id
                for d in s.scalars(
                    select(Deployment).where(Deployment.state.in_(deployments.ACTIVE))
                )
                if deployments.scaled(d) or "ray_serve" in d.spec
            ]
        for gone in set(self._scalers) - set(ids):
            self._scalers.pop(gone, None)
        for dep_id in ids:
            with self.db.session() as s:
                d = s.get(Deployment, dep_id)
                if d is None:
                    continue
                scaler = self._scalers.setdefault(dep_id, scaling.Scaler())
                pool = scaling.pool(self.pools, dep_id)
                last = pool.series[-1] if pool.series else None
                scaling.autoscale(s, d, pool, scaler, time.monotonic())
            if self.bus.postgres and pool.series and pool.series[-1] is not last:
                # the plots' new point, for whichever server is asked for them
                self._tell("sample", dep_id, sample=pool.series[-1])

    def advance_pipelines(self) -> None:
        """Pipeline runs follow their steps' jobs and start the steps whose inputs exist."""
        if self.pipeline_context is None:
            return
        from forgehub.db.models import PipelineRun
        from forgehub.pipelines import runs

        with self.db.session() as s:
            ids = runs.active_ids(s)
        if not ids:
            return
        ctx = self.pipeline_context()
        for run_id in ids:
            with self.db.session() as s:
                run = s.get(PipelineRun, run_id)
                if run is not None and runs.advance(s, run, ctx):
                    self.wake.set()  # a step that just ended may let others start

    def sync_deployments(self) -> None:
        """Deployments follow their jobs (a lost host fails one, or restarts it)."""
        from forgehub.db.models import Deployment
        from forgehub.deployments import service as deployments

        with self.db.session() as s:
            ids = deployments.active_ids(s)
        for dep_id in ids:
            with self.db.session() as s:
                d = s.get(Deployment, dep_id)
                if d is not None:
                    deployments.sync(s, d)
                    deployments.stop_if_idle(s, d, self.last_request.get(dep_id))

    # -- helpers ------------------------------------------------------------------------------

    def adapter(self, conn: ComputeConnection) -> ComputeAdapter:
        a = self._adapters.get(conn.id)
        if a is None:
            a = service.COMPUTE.adapter_for(conn, self.box)
            if a.slots_on_server:
                a.log_dir = self.data_dir / "jobs" / "runner-logs"
                a.cache_dir = self.data_dir / "cache"
            self._adapters[conn.id] = a
        return a

    def launch(self, job: Job, conn: ComputeConnection, token: str) -> Launch:
        return Launch(
            job_id=job.id,
            attempt=job.attempt,
            server_url=str(conn.config.get("server_url") or self.server_url),
            token=token,
            resources=Resources.model_validate(job.spec.get("resources", {})),
            name=f"forgehub-{job.module or 'command'}-{job.id[:8]}",
        )

    # -- 1. start -----------------------------------------------------------------------------

    def start_queued(self) -> None:
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(Job.id, ComputeConnection.kind, ComputeConnection.id, Job.kind)
                    .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
                    .where(Job.state == JobState.queued, ComputeConnection.kind.in_(pushed()))
                    .order_by(Job.created_at)
                    .limit(200)
                )
            )
            local_free = self.local_slots - service.count_active(s, kinds_with("slots_on_server"))
        remote: dict[str, list[str]] = {}
        on_server = kinds_with("slots_on_server")
        for job_id, kind, conn_id, job_kind in rows:
            if kind in on_server:  # a local start is a fork: done here, within the slots
                if job_kind == "service":  # a deployment: its own limits, not a job slot
                    self.start_one(job_id)
                    continue
                if local_free <= 0:
                    continue
                local_free -= 1
                self.start_one(job_id)
            else:
                remote.setdefault(conn_id, []).append(job_id)
        for conn_id, ids in remote.items():
            self.in_lane("submit", conn_id, self._start_many, ids)

    def _start_many(self, ids: list[str]) -> None:
        for job_id in ids:
            if self.stopping.is_set():
                return
            self.start_one(job_id)

    def start_one(self, job_id: str) -> None:
        with self.db.session() as s:
            # the row stays locked until the start is stored: should two servers ever both
            # think they dispatch (a partition), the second skips it
            job = s.get(Job, job_id, with_for_update={"skip_locked": True})
            if job is None or job.state != JobState.queued:
                return
            conn = s.get(ComputeConnection, job.compute_id)
            assert conn is not None
            try:
                adapter = self.adapter(conn)
                if adapter.pull:
                    return
                devices = self.local_gpus(s, job) if adapter.slots_on_server else None
                if devices is False:
                    return  # waits for a GPU to come free
                token, token_columns = service.new_job_token(job)
                launch = self.launch(job, conn, token)
                if isinstance(devices, str):
                    launch = dataclasses.replace(launch, gpus=devices)
                handle = adapter.submit(launch)
            except (ComputeError, ValueError) as exc:
                transition(s, job, JobState.failed, str(exc), error=f"cannot start: {exc}")
                return
            transition(
                s,
                job,
                JobState.starting,
                f"submitted to {conn.name} ({conn.kind})",
                backend_ref=handle,
                **token_columns,
                lease_expires_at=(
                    None if adapter.queues_itself else utcnow() + timedelta(seconds=self.lease_s)
                ),
            )

    def local_gpus(self, s: Any, job: Job) -> str | bool:
        """The server's GPUs for a job on local compute, as CUDA_VISIBLE_DEVICES ("": none,
        for a job that asked for none on a machine with GPUs), or False when not enough are
        free now: the job stays queued. Held GPUs are read from the running jobs' handles,
        so they survive a server restart."""
        machine = gpus.machine_gpus()
        res = Resources.model_validate(job.spec.get("resources", {}))
        if not res.gpu:
            return ""
        refs = s.scalars(
            select(Job.backend_ref)
            .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
            .where(
                Job.state.in_(service.ACTIVE),
                ComputeConnection.kind.in_(kinds_with("slots_on_server")),
                Job.backend_ref.is_not(None),
            )
        )
        got = gpus.pick(machine, held_gpus(list(refs)), res.gpu, res.gpu_model)
        if got is None:
            why = f"waiting for {res.gpu} free GPU(s) on the server"
            if job.reason != why:
                job.reason = why
            return False
        return gpus.visible(got)

    # -- 2. follow ----------------------------------------------------------------------------

    def follow(self) -> None:
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(Job.id, Job.backend_ref, ComputeConnection)
                    .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
                    .where(
                        Job.state.in_(service.ACTIVE),
                        ComputeConnection.kind.in_(pushed()),
                        Job.backend_ref.is_not(None),
                    )
                )
            )
        by_conn: dict[str, tuple[ComputeConnection, dict[str, str]]] = {}
        for job_id, ref, conn in rows:
            assert ref is not None
            by_conn.setdefault(conn.id, (conn, {}))[1][ref] = job_id
        for conn, handles in by_conn.values():
            self.in_lane("status", conn.id, self._follow_one, conn, handles)

    def _follow_one(self, conn: ComputeConnection, handles: dict[str, str]) -> None:
        try:
            statuses = self.adapter(conn).status(list(handles))
        except ComputeError as exc:
            log.warning("cannot get job status from %s: %s", conn.name, exc)
            return
        for ref, st in statuses.items():
            self.apply_status(handles[ref], st)

    def apply_status(self, job_id: str, st: Any) -> None:
        now = time.monotonic()
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if job is None or JobState(job.state).finished:
                self._ended_at.pop(job_id, None)
                return
            if st.state is None or st.state == JobState.running:
                if st.reason and st.reason != job.reason:
                    job.reason = st.reason
                return
            # the back end says it ended, but the runner has not reported: give it a moment
            first = self._ended_at.setdefault(job_id, now)
            if now - first < GRACE_S and not st.lost:
                return
            self._ended_at.pop(job_id, None)
            if st.lost:
                lose(s, job, st.reason)
            elif st.state == JobState.cancelled or job.cancel_requested_at is not None:
                transition(s, job, JobState.cancelled, st.reason or "cancelled")
            else:
                transition(s, job, JobState.failed, st.reason, error=st.reason)

    # -- 3. cancel and time limits; 4. leases ---------------------------------------------------

    def enforce(self, cancels: bool = True, reap: bool = True) -> None:
        """Pass cancels on (every round: a cancel is prompt); fail jobs over their time limit
        and give lapsed leases' jobs back (once a second: both are measured in seconds). Each
        reads only the jobs it acts on, so a queue of thousands costs a round nothing."""
        if cancels:
            self._pass_cancels()
        if reap and time.monotonic() - self._last_reap >= REAP_EVERY_S:
            self._last_reap = time.monotonic()
            self._time_limits()
            self._lapsed_leases()

    def _pass_cancels(self) -> None:
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(Job.id, Job.backend_ref, ComputeConnection)
                    .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
                    .where(
                        Job.state.in_(service.ACTIVE),
                        Job.cancel_requested_at.is_not(None),
                        Job.backend_ref.is_not(None),
                        ComputeConnection.kind.in_(pushed()),
                    )
                )
            )
        for job_id, ref, conn in rows:
            self._cancel_on_backend(job_id, ref, conn)

    def _time_limits(self) -> None:
        """Jobs past their time limit (and its grace) are cancelled on their back end and
        failed. Limits are per job, so the running ones are read: the queue is not."""
        now = utcnow()
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(Job.id, Job.spec, Job.started_at, Job.backend_ref, ComputeConnection)
                    .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
                    .where(Job.state.in_(service.ACTIVE), Job.started_at.is_not(None))
                )
            )
        for job_id, spec, started_at, ref, conn in rows:
            limit = Resources.model_validate(spec.get("resources", {})).time_limit_s
            if now - started_at <= timedelta(seconds=limit + GRACE_S):
                continue
            if conn.kind in pushed():  # a worker's runner hears at its next report
                self._cancel_on_backend(job_id, ref, conn)
            with self.db.session() as s:
                j = s.get(Job, job_id)
                if j is not None and j.state in service.ACTIVE:
                    msg = f"time limit of {limit} s exceeded"
                    transition(s, j, JobState.failed, msg, error=msg)

    def _lapsed_leases(self) -> None:
        now = utcnow()
        with self.db.session() as s:
            rows = list(
                s.execute(
                    select(Job.id, ComputeConnection)
                    .join(ComputeConnection, Job.compute_id == ComputeConnection.id)
                    .where(Job.state.in_(service.ACTIVE), Job.lease_expires_at < now)
                )
            )
        for job_id, conn in rows:
            with self.db.session() as s:
                j = s.get(Job, job_id)
                if j is None or j.lease_expires_at is None or j.lease_expires_at >= now:
                    continue  # reported in the meantime
                who = "worker" if self.adapter(conn).pull else "runner"
                if lose(s, j, f"the {who} stopped answering (lease lapsed)"):
                    self.notify()

    def _cancel_on_backend(self, job_id: str, ref: str | None, conn: ComputeConnection) -> None:
        """Ask the back end (once) to stop a job the server started there, in the background."""
        if ref and job_id not in self._cancelled:
            self._cancelled.add(job_id)
            self._pool.submit(self._cancel_one, job_id, ref, conn)

    def _cancel_one(self, job_id: str, ref: str, conn: ComputeConnection) -> None:
        try:
            self.adapter(conn).cancel(ref)
        except ComputeError as exc:
            log.warning("cannot cancel %s on %s: %s", job_id, conn.name, exc)
            return
        # A job still waiting in the back end's own queue (Ray keeps a stopped job PENDING
        # until it could have started) has no runner to report: it is cancelled now. A runner
        # that starts later finds its job over and its token dead, and exits.
        with self.db.session() as s:
            job = s.get(Job, job_id)
            if (
                job is not None
                and job.state == JobState.starting
                and job.started_at is None
                and job.backend_ref == ref
            ):
                transition(s, job, JobState.cancelled, "cancelled before it started")
                self.notify()

    def notify(self) -> None:
        """Jobs may have become claimable or startable: wake this server and the others."""
        self.bus.publish("jobs")

    def woken(self) -> None:
        self.wake.set()
        for listener in self.listeners:
            listener()
