"""The job queue in the store: atomic claims under contention, the state machine, retries."""

from __future__ import annotations

import threading
from datetime import timedelta

import pytest
from sqlalchemy import select

from forgehub.auth import create_user
from forgehub.compute import Resources
from forgehub.db import Database, upgrade
from forgehub.db.models import (
    ComputeConnection,
    Job,
    JobEvent,
    JobState,
    StorageConnection,
    Worker,
    utcnow,
)
from forgehub.jobs import service
from forgehub.jobs.states import TransitionError, lose, transition


def _setup(url: str, jobs: int, **job_fields: object) -> tuple[Database, str]:
    upgrade(url)
    db = Database(url)
    with db.session() as s:
        user = create_user(s, "alice")
        workers = ComputeConnection(owner_id=user.id, name="workers", kind="worker", config={})
        store = StorageConnection(owner_id=user.id, name="default", kind="local", config={})
        s.add_all([workers, store])
        s.flush()
        for i in range(jobs):
            s.add(
                Job(
                    owner_id=user.id,
                    kind="command",
                    spec={"command": ["true"], "resources": {"cpu": 1}},
                    compute_id=workers.id,
                    storage_id=store.id,
                    created_at=utcnow() + timedelta(milliseconds=i),
                    **job_fields,
                )
            )
        return db, user.id


def test_many_workers_claim_each_job_exactly_once(db_url: str) -> None:
    db, owner = _setup(db_url, 40)
    with db.session() as s:
        ids = []
        for i in range(8):
            w = Worker(owner_id=owner, name=f"w{i}", cpus=4)
            s.add(w)
            s.flush()
            ids.append(w.id)
    claimed: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work(worker_id: str) -> None:
        try:
            while True:
                with db.session() as s:
                    w = s.get(Worker, worker_id)
                    assert w is not None
                    got = service.claim(s, w, Resources(cpu=4), 30, db.dialect)
                    if got is None:
                        return
                    with lock:
                        claimed.append(got[0].id)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(claimed) == 40 and len(set(claimed)) == 40
    with db.session() as s:
        states = {j.state for j in s.query(Job)}
        assert states == {JobState.starting}
        # exactly one "starting" event per job: no job was taken twice
        assert s.query(JobEvent).filter(JobEvent.state == "starting").count() == 40
    db.dispose()


def test_claim_respects_resources_labels_and_owner(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/q.db"
    db, owner = _setup(url, 0)
    with db.session() as s:
        conn = s.query(ComputeConnection).one()
        store = s.query(StorageConnection).one()
        gpu_job = Job(
            owner_id=owner,
            kind="train",
            module="digits",
            spec={"resources": {"gpu": 1}, "labels": []},
            compute_id=conn.id,
            storage_id=store.id,
        )
        s.add(gpu_job)
        bob = create_user(s, "bob")
        cpu_box = Worker(owner_id=owner, name="cpu", cpus=8, gpus=0)
        shared_gpu = Worker(owner_id=bob.id, name="bob-gpu", cpus=8, gpus=1, shared=True)
        private_gpu = Worker(owner_id=bob.id, name="bob-private", cpus=8, gpus=1)
        s.add_all([cpu_box, shared_gpu, private_gpu])
        s.flush()
        assert service.claim(s, cpu_box, Resources(cpu=8), 30, "sqlite") is None
        assert service.claim(s, private_gpu, Resources(cpu=8, gpu=1), 30, "sqlite") is None
        # a shared worker takes another user's job only if the job allows shared workers
        assert service.claim(s, shared_gpu, Resources(cpu=8, gpu=1), 30, "sqlite") is None
        gpu_job.spec = {**gpu_job.spec, "shared_workers": True}
        s.flush()
        got = service.claim(s, shared_gpu, Resources(cpu=8, gpu=1), 30, "sqlite")
        assert got is not None and got[0].id == gpu_job.id
        assert got[1].startswith("fhj_") and gpu_job.token_digest not in got[1]
    db.dispose()


def test_state_machine_and_retry_policy(tmp_path: object) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    db, _ = _setup(url, 1, max_retries=1)
    with db.session() as s:
        job = s.query(Job).one()
        with pytest.raises(TransitionError, match="cannot go from queued to running"):
            transition(s, job, JobState.running)  # queued cannot jump to running
        assert transition(s, job, JobState.starting, "claimed")
        assert transition(s, job, JobState.running, "running")
        assert lose(s, job, "worker gone")  # first loss: queued again
        assert job.state == JobState.queued and job.attempt == 1
        assert transition(s, job, JobState.starting)
        assert lose(s, job, "worker gone again")  # retry limit reached: failed, with reasons
        assert job.state == JobState.failed and "gave up after 2 attempt(s)" in (job.error or "")
        assert not transition(s, job, JobState.cancelled)  # finished jobs never change
        events = [e.state for e in s.query(JobEvent).order_by(JobEvent.id)]
        assert events == ["starting", "running", "queued", "starting", "failed"]
        assert job.finished_at is not None and job.token_digest is None
    db.dispose()


def test_trainings_go_through_the_shared_guarded_transition(tmp_path: object) -> None:
    """Model-API trainings move like jobs: by the machine's rules, compare-and-set, and a
    finished training never changes again (a late result cannot overwrite a cancel)."""
    from forgehub.db.models import Training, TrainingState
    from forgehub.runs import transition as guarded
    from forgehub.states import TRAININGS

    db, owner = _setup(f"sqlite:///{tmp_path}/t.db", 0)
    with db.session() as s:
        t = Training(owner_id=owner, module="digits", args={}, state=TrainingState.queued)
        s.add(t)
        s.flush()
        with pytest.raises(TransitionError, match="training cannot go from queued to succeeded"):
            guarded(s, t, TrainingState.succeeded, TRAININGS)
        assert guarded(s, t, TrainingState.running, TRAININGS)
        assert t.started_at is not None
        stale = s.get(Training, t.id)
        assert guarded(s, t, TrainingState.cancelled, TRAININGS, error="cancelled")
        assert t.finished_at is not None
        assert not guarded(s, t, TrainingState.succeeded, TRAININGS, result={"late": True})
        assert stale is t and t.state == TrainingState.cancelled and not (t.result or {})
    db.dispose()


def test_a_job_started_by_a_claim_whose_answer_was_lost_goes_back_as_it_was(
    tmp_path: object,
) -> None:
    """A worker's claim starts its job at once; if the worker hung up before the answer came,
    nobody holds the job's token, and the job goes back to the queue without using up an
    attempt (and with no start time). A running job is never released otherwise."""
    from forgehub.secrets import SecretBox

    db, owner = _setup(f"sqlite:///{tmp_path}/q.db", 1, max_retries=0)
    box = SecretBox.for_data_dir(tmp_path)  # type: ignore[arg-type]
    with db.session() as s:
        w = Worker(owner_id=owner, name="w", cpus=4)
        s.add(w)
        s.flush()
        got = service.claim(s, w, Resources(cpu=4), 30, db.dialect)
        assert got is not None
        job = got[0]
        spec = service.started(s, job, "box", box, 30)
        assert spec["id"] == job.id and job.state == JobState.running
        assert not service.release(s, job, "a plain release")  # running: not without the claim
        assert service.release(s, job, "the worker went away", by_claim=True)
        assert (job.state, job.attempt, job.started_at, job.worker_id) == (
            JobState.queued,
            0,
            None,
            None,
        )
        events = s.scalars(
            select(JobEvent.state).where(JobEvent.job_id == job.id).order_by(JobEvent.id)
        )
        assert list(events) == ["starting", "running", "queued"]
        assert service.claim(s, w, Resources(cpu=4), 30, db.dialect) is not None  # again
    db.dispose()
