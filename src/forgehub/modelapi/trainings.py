"""Trainings of the model API: persisted, cancellable, each in its own process.

A training runs in a child process (so it never blocks predictions and a cancel really stops it),
reports metrics and its result over a pipe, and every state change is stored. At start-up, a
training left ``queued`` or ``running`` by a server that died is marked failed with the reason.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import select

from forgehub.db import Database
from forgehub.db.models import Training, TrainingState, utcnow
from forgehub.module.loaded import LoadedModule
from forgehub.runs import transition
from forgehub.states import TRAININGS

log = logging.getLogger("forgehub.modelapi.train")
CANCEL_GRACE_S = 3.0
_ctx = multiprocessing.get_context("spawn")


def _child(
    target: str, name: str, args: Any, output_dir: str, conn: Connection, cancel: Any
) -> None:
    """Entry point of a training process. It leads a process group of its own, so module code
    may start processes (multiprocessing, subprocesses, threads) as it does under DEEPaaS, and
    a cancel or the end of the training still ends the whole tree; it dies with the server."""
    os.setsid()
    try:  # Linux: die with the server process, even if that is killed outright
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    from forgehub.module.contract import Cancelled, TrainContext
    from forgehub.module.discovery import import_target, wrap

    try:
        module = wrap(import_target(target), target, name)
        ctx = TrainContext(
            inputs={},
            output_dir=Path(output_dir),
            _metric=lambda n, v, s: conn.send(("metric", n, v, s, time.time())),
            _progress=lambda f, m: conn.send(("progress", f, m)),
            _cancelled=cancel.is_set,
        )
        result = module.train(args, ctx)
        conn.send(("done", result))
    except Cancelled:
        conn.send(("cancelled", None))
    except BaseException as exc:  # noqa: BLE001 - reported to the client, never lost
        log.debug("training failed: %s", traceback.format_exc())
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


def end_tree(proc: Any, grace: float = CANCEL_GRACE_S) -> None:
    """End a training process and everything it started (its process group): SIGTERM, then
    SIGKILL after ``grace`` seconds."""
    pgid = proc.pid
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except (ProcessLookupError, PermissionError):
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(pgid):
            time.sleep(0.05)
        if not _group_alive(pgid):
            break
    proc.join(grace)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    # a zombie leader still counts for killpg: look for a live member
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


class _Run:
    def __init__(self, proc: Any, cancel: Any, cleanup: Path | None) -> None:
        self.proc = proc
        self.cancel = cancel
        self.cleanup = cleanup
        self.cancel_requested = False


class _Pending:
    def __init__(self, module: LoadedModule, args: Any, upload_dir: Path | None) -> None:
        self.module = module
        self.args = args
        self.upload_dir = upload_dir


LAPSED = "the server running this training stopped; start it again"


def reap_lapsed(session: Any) -> int:
    """Fail the trainings whose server stopped renewing their lease (several servers)."""
    n = 0
    for t in session.scalars(
        select(Training).where(
            Training.state.in_([TrainingState.queued, TrainingState.running]),
            Training.lease_expires_at.is_not(None),
            Training.lease_expires_at < utcnow(),
        )
    ):
        n += transition(session, t, TrainingState.failed, TRAININGS, error=LAPSED)
    return n


class TrainingManager:
    """Runs at most ``max_running`` trainings at once per server process; the rest queue.

    With ``lease_s`` (one of several server processes on one database) each training this
    process holds, queued or running, has a lease it renews; another server restarting leaves
    it alone, and the reaper duty fails it only once its lease lapsed (this process died)."""

    def __init__(
        self,
        db: Database,
        modules: dict[str, LoadedModule],
        work_dir: Path,
        max_running: int = 2,
        lease_s: float | None = None,
    ) -> None:
        self.db = db
        self.modules = modules
        self.work_dir = work_dir
        self.max_running = max_running
        self.lease_s = lease_s
        self.runs: dict[str, _Run] = {}
        self.queue: dict[str, _Pending] = {}  # insertion order = FIFO
        self.lock = threading.RLock()
        self._stop = threading.Event()
        if lease_s is not None:
            threading.Thread(target=self._renew, daemon=True, name="training-leases").start()

    def _lease(self) -> Any:
        from datetime import timedelta

        assert self.lease_s is not None
        return utcnow() + timedelta(seconds=self.lease_s)

    def _renew(self) -> None:
        from sqlalchemy import update

        assert self.lease_s is not None
        while not self._stop.wait(self.lease_s / 3):
            with self.lock:
                ids = [*self.queue, *self.runs]
            if not ids:
                continue
            try:
                with self.db.session() as s:
                    s.execute(
                        update(Training)
                        .where(Training.id.in_(ids))
                        .values(lease_expires_at=self._lease())
                    )
            except Exception:  # noqa: BLE001 - the next round tries again
                log.warning("cannot renew the leases of %d training(s)", len(ids), exc_info=True)

    def recover(self) -> int:
        """Mark trainings that a dead server left unfinished as failed; returns how many. With
        leases, only those whose lease lapsed (or that never had one): the others belong to a
        server that is still running them."""
        n = 0
        stmt = (
            select(Training)
            .where(Training.state.in_([TrainingState.queued, TrainingState.running]))
            .where(Training.module.in_(list(self.modules)))
        )
        if self.lease_s is not None:
            from sqlalchemy import or_

            lapsed = or_(Training.lease_expires_at.is_(None), Training.lease_expires_at < utcnow())
            stmt = stmt.where(lapsed)
        with self.db.session() as s:
            for t in s.scalars(stmt):
                n += transition(
                    s,
                    t,
                    TrainingState.failed,
                    TRAININGS,
                    error="the server stopped while this training was running; start it again",
                )
        return n

    def start(
        self,
        module: LoadedModule,
        args: Any,
        stored_args: dict[str, Any],
        owner_id: str,
        upload_dir: Path | None,
    ) -> Training:
        """Store a new training; it starts now if a slot is free, else it waits its turn."""
        with self.db.session() as s:
            training = Training(
                owner_id=owner_id,
                module=module.name,
                args=stored_args,
                state=TrainingState.queued,
                result={"metrics": {}, "progress": 0.0},
                lease_expires_at=self._lease() if self.lease_s is not None else None,
            )
            s.add(training)
        with self.lock:
            self.queue[training.id] = _Pending(module, args, upload_dir)
        self._dispatch()
        return self.get(training.id) or training

    def _dispatch(self) -> None:
        while True:
            with self.lock:
                if len(self.runs) >= self.max_running or not self.queue:
                    return
                tid = next(iter(self.queue))
                pending = self.queue.pop(tid)
                # reserve the slot before the (slow) process start
                self.runs[tid] = _Run(None, None, pending.upload_dir)
            try:
                self._launch(tid, pending)
            except Exception as exc:  # noqa: BLE001 - reported on the training itself
                log.exception("cannot start training %s", tid)
                with self.lock:
                    self.runs.pop(tid, None)
                self._finish(tid, TrainingState.failed, error=f"cannot start: {exc}")

    def _launch(self, tid: str, pending: _Pending) -> None:
        with self.db.session() as s:
            t = s.get(Training, tid)
            claimed = t is not None and transition(s, t, TrainingState.running, TRAININGS)
        if not claimed:  # cancelled through another server process while it waited
            with self.lock:
                self.runs.pop(tid, None)
            if pending.upload_dir is not None:
                shutil.rmtree(pending.upload_dir, ignore_errors=True)
            return
        output_dir = self.work_dir / tid / "output"
        output_dir.mkdir(parents=True, exist_ok=True)
        parent, child = _ctx.Pipe(duplex=False)
        cancel = _ctx.Event()
        proc = _ctx.Process(
            target=_child,
            name=f"forgehub-train-{tid}",
            daemon=False,  # module code may start processes of its own
            args=(
                pending.module.target,
                pending.module.name,
                pending.args,
                str(output_dir),
                child,
                cancel,
            ),
        )
        proc.start()
        child.close()
        run = _Run(proc, cancel, pending.upload_dir)
        with self.lock:
            self.runs[tid] = run
        threading.Thread(
            target=self._watch, args=(tid, run, parent), daemon=True, name=f"watch-{tid}"
        ).start()

    def _watch(self, tid: str, run: _Run, conn: Connection) -> None:
        metrics: dict[str, list[list[Any]]] = {}
        progress = 0.0
        outcome: tuple[TrainingState, Any, str | None] | None = None
        last_flush = 0.0
        while True:
            try:
                if not conn.poll(0.5):
                    if not run.cancel_requested and self._cancel_requested(tid):
                        threading.Thread(target=self.cancel, args=(tid,), daemon=True).start()
                    continue
                msg = conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "metric":
                _, name, value, step, ts = msg
                series = metrics.setdefault(name, [])
                series.append([step if step is not None else len(series), value, ts])
            elif kind == "progress":
                progress = msg[1]
            elif kind == "done":
                outcome = (TrainingState.succeeded, msg[1], None)
            elif kind == "cancelled":
                outcome = (TrainingState.cancelled, None, "cancelled")
            elif kind == "error":
                outcome = (TrainingState.failed, None, msg[1])
            if time.monotonic() - last_flush > 0.5 or outcome is not None:
                self._update(tid, {"metrics": metrics, "progress": progress})
                last_flush = time.monotonic()
            if outcome is not None:
                break  # the module's helpers may keep its process alive: do not wait for them
        if outcome is not None:
            run.proc.join(0.5)
        else:
            run.proc.join()
        if run.cancel_requested:
            outcome = (TrainingState.cancelled, None, "cancelled by request")
        elif outcome is None:
            code = run.proc.exitcode
            outcome = (
                TrainingState.failed,
                None,
                f"the training process died (exit code {code}) without a result",
            )
        state, output, error = outcome
        result = {
            "metrics": metrics,
            "progress": 1.0 if state == TrainingState.succeeded else progress,
            "output": output,
            "output_dir": str(self.work_dir / tid / "output"),
        }
        self._finish(tid, state, result=result, error=error)
        # the module's own processes (a tensorboard, a data loader) end with its training
        end_tree(run.proc, grace=1.0)
        with self.lock:
            self.runs.pop(tid, None)
        if run.cleanup is not None:
            shutil.rmtree(run.cleanup, ignore_errors=True)
        self._dispatch()

    def _cancel_requested(self, tid: str) -> bool:
        """A cancel asked through another server process (``--workers N``)."""
        with self.db.session() as s:
            flag = s.scalar(select(Training.cancel_requested_at).where(Training.id == tid))
            return flag is not None

    def _update(self, tid: str, result: dict[str, Any]) -> None:
        with self.db.session() as s:
            t = s.get(Training, tid)
            if t is not None and not t.state.finished:
                t.result = {**(t.result or {}), **result}

    def _finish(
        self,
        tid: str,
        state: TrainingState,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        fields: dict[str, Any] = {"error": error if state != TrainingState.succeeded else None}
        if result is not None:
            fields["result"] = result
        with self.db.session() as s:
            t = s.get(Training, tid)
            if t is not None:
                transition(s, t, state, TRAININGS, **fields)

    def cancel(self, tid: str) -> None:
        """Cancel a training and wait until its final state is stored."""
        with self.lock:
            pending = self.queue.pop(tid, None)
            run = self.runs.get(tid)
        if pending is not None:
            self._finish(tid, TrainingState.cancelled, error="cancelled before it started")
            if pending.upload_dir is not None:
                shutil.rmtree(pending.upload_dir, ignore_errors=True)
            return
        if run is None:
            self._cancel_elsewhere(tid)
            return
        deadline = time.monotonic() + 30
        while run.proc is None and time.monotonic() < deadline:  # still being launched
            time.sleep(0.02)
            with self.lock:
                run = self.runs.get(tid, run)
        if run.cancel_requested or run.proc is None:
            return
        run.cancel_requested = True
        run.cancel.set()
        run.proc.join(CANCEL_GRACE_S)
        end_tree(run.proc)
        deadline = time.monotonic() + 30  # a busy machine: the answer is the final state
        while time.monotonic() < deadline:  # wait for the watcher to store the outcome
            with self.lock:
                if tid not in self.runs:
                    return
            time.sleep(0.02)

    def _cancel_elsewhere(self, tid: str) -> None:
        """The training runs in another server process: flag it and wait for that process."""
        with self.db.session() as s:
            t = s.get(Training, tid)
            if t is None or t.state.finished:
                return
            t.cancel_requested_at = utcnow()
            if t.state == TrainingState.queued:  # not started anywhere yet: cancel it here
                s.flush()
                msg = "cancelled before it started"
                transition(s, t, TrainingState.cancelled, TRAININGS, error=msg)
                return
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.db.session() as s:
                t = s.get(Training, tid)
                if t is None or t.state.finished:
                    return
            time.sleep(0.1)

    def shutdown(self) -> None:
        self._stop.set()
        with self.lock:
            queued = list(self.queue)
            self.queue.clear()
            ids = list(self.runs)
        for tid in queued:
            self._finish(
                tid, TrainingState.failed, error="the server shut down before this training started"
            )
        for tid in ids:
            with self.lock:
                run = self.runs.get(tid)
            if run is not None and run.proc is not None:
                end_tree(run.proc, grace=1.0)
        for tid in ids:
            with self.db.session() as s:
                t = s.get(Training, tid)
                if t is not None:
                    msg = "the server shut down while this training was running"
                    transition(s, t, TrainingState.failed, TRAININGS, error=msg)

    def list(self, module: str, owner_id: str | None) -> list[Training]:
        with self.db.session() as s:
            stmt = select(Training).where(Training.module == module)
            if owner_id is not None:
                stmt = stmt.where(Training.owner_id == owner_id)
            return list(s.scalars(stmt.order_by(Training.created_at)))

    def get(self, tid: str) -> Training | None:
        with self.db.session() as s:
            return s.get(Training, tid)
