"""Trainings of the model API: persisted, cancellable, each in its own process.

A training runs in a child process (so it never blocks predictions and a cancel really stops it),
reports metrics and its result over a pipe, and every state change is stored. At start-up, a
training left ``queued`` or ``running`` by a server that died is marked failed with the reason.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
import threading
import time
import traceback
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from forgehub.db import Database
from forgehub.db.models import Training, TrainingState, utcnow
from forgehub.module.loaded import LoadedModule

log = logging.getLogger("forgehub.modelapi.train")
CANCEL_GRACE_S = 3.0
_ctx = multiprocessing.get_context("spawn")


def _child(
    target: str, name: str, args: Any, output_dir: str, conn: Connection, cancel: Any
) -> None:
    """Entry point of a training process."""
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


class _Run:
    def __init__(self, proc: Any, cancel: Any, cleanup: Path | None) -> None:
        self.proc = proc
        self.cancel = cancel
        self.cleanup = cleanup
        self.cancel_requested = False


class TrainingManager:
    def __init__(self, db: Database, modules: dict[str, LoadedModule], work_dir: Path) -> None:
        self.db = db
        self.modules = modules
        self.work_dir = work_dir
        self.runs: dict[str, _Run] = {}
        self.lock = threading.Lock()

    def recover(self) -> int:
        """Mark trainings that a dead server left unfinished as failed; returns how many."""
        with self.db.session() as s:
            res = s.execute(
                update(Training)
                .where(Training.state.in_([TrainingState.queued, TrainingState.running]))
                .where(Training.module.in_(list(self.modules)))
                .values(
                    state=TrainingState.failed,
                    finished_at=utcnow(),
                    error="the server stopped while this training was running; start it again",
                )
            )
            return int(getattr(res, "rowcount", 0) or 0)

    def start(
        self,
        module: LoadedModule,
        args: Any,
        stored_args: dict[str, Any],
        owner_id: str,
        upload_dir: Path | None,
    ) -> Training:
        with self.db.session() as s:
            training = Training(
                owner_id=owner_id,
                module=module.name,
                args=stored_args,
                state=TrainingState.running,
                started_at=utcnow(),
                result={"metrics": {}, "progress": 0.0},
            )
            s.add(training)
        output_dir = self.work_dir / training.id / "output"
        output_dir.mkdir(parents=True, exist_ok=True)
        parent, child = _ctx.Pipe(duplex=False)
        cancel = _ctx.Event()
        proc = _ctx.Process(
            target=_child,
            name=f"forgehub-train-{training.id}",
            daemon=True,
            args=(module.target, module.name, args, str(output_dir), child, cancel),
        )
        try:
            proc.start()
        except Exception as exc:
            self._finish(training.id, TrainingState.failed, error=f"cannot start: {exc}")
            raise
        child.close()
        run = _Run(proc, cancel, upload_dir)
        with self.lock:
            self.runs[training.id] = run
        threading.Thread(
            target=self._watch,
            args=(training.id, run, parent),
            daemon=True,
            name=f"watch-{training.id}",
        ).start()
        return training

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
        with self.lock:
            self.runs.pop(tid, None)
        if run.cleanup is not None:
            shutil.rmtree(run.cleanup, ignore_errors=True)

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
        with self.db.session() as s:
            t = s.get(Training, tid)
            if t is None:
                return
            t.state = state
            t.finished_at = utcnow()
            t.error = error if state != TrainingState.succeeded else None
            if result is not None:
                t.result = result

    def cancel(self, tid: str) -> None:
        """Cancel a training and wait until its final state is stored."""
        with self.lock:
            run = self.runs.get(tid)
        if run is None:
            self._cancel_elsewhere(tid)
            return
        if run.cancel_requested:
            return
        run.cancel_requested = True
        run.cancel.set()
        run.proc.join(CANCEL_GRACE_S)
        if run.proc.is_alive():
            run.proc.terminate()
            run.proc.join(CANCEL_GRACE_S)
        if run.proc.is_alive():
            run.proc.kill()
            run.proc.join()
        deadline = time.monotonic() + 10
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
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with self.db.session() as s:
                t = s.get(Training, tid)
                if t is None or t.state.finished:
                    return
            time.sleep(0.1)

    def shutdown(self) -> None:
        with self.lock:
            ids = list(self.runs)
        for tid in ids:
            with self.lock:
                run = self.runs.get(tid)
            if run is not None:
                run.proc.terminate()
        for tid in ids:
            with self.db.session() as s:
                t = s.get(Training, tid)
                if t is not None and not t.state.finished:
                    t.state = TrainingState.failed
                    t.error = "the server shut down while this training was running"
                    t.finished_at = utcnow()

    def list(self, module: str, owner_id: str | None) -> list[Training]:
        with self.db.session() as s:
            stmt = select(Training).where(Training.module == module)
            if owner_id is not None:
                stmt = stmt.where(Training.owner_id == owner_id)
            return list(s.scalars(stmt.order_by(Training.created_at)))

    def get(self, tid: str) -> Training | None:
        with self.db.session() as s:
            return s.get(Training, tid)
