"""Engine and session factory; migrations are applied through Alembic's API."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

MIGRATIONS = Path(__file__).parent / "migrations"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")  # first: other processes may hold the lock
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)


def alembic_config(url: str) -> AlembicConfig:
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the store at ``url`` up to ``revision`` (idempotent)."""
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


def current_revision(url: str) -> str | None:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()


class WriteGate:
    """SQLite has one writer at a time; its own wait is a sleep-and-retry loop (up to 100 ms a
    turn), which under load gives long, unfair tails and, past busy_timeout, "database is
    locked". Sessions of this process instead queue here, from their first write to their
    commit or rollback, so each waits only for the writes before it. Other processes still
    meet SQLite's own lock. A session that waits longer than ``patience`` goes on without the
    gate (SQLite's lock still keeps the data safe), so a nested session can never hang."""

    def __init__(self, patience: float = 10.0) -> None:
        self.patience = patience
        self._cond = threading.Condition()
        self._holder: int | None = None

    def enter(self, session: Session) -> None:
        if session.info.get("write_gate"):
            return
        deadline = time.monotonic() + self.patience
        with self._cond:
            while self._holder is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    session.info["write_gate"] = "bypassed"
                    return
                self._cond.wait(left)
            self._holder = id(session)
        session.info["write_gate"] = "held"

    def leave(self, session: Session) -> None:
        if session.info.pop("write_gate", None) != "held":
            return
        with self._cond:
            if self._holder == id(session):
                self._holder = None
                self._cond.notify()

    def install(self, factory: sessionmaker[Session]) -> None:
        def before_flush(session: Session, *_: Any) -> None:
            if session.new or session.dirty or session.deleted:
                self.enter(session)

        def on_execute(state: Any) -> None:
            if state.is_insert or state.is_update or state.is_delete:
                self.enter(state.session)

        event.listen(factory, "before_flush", before_flush)
        event.listen(factory, "do_orm_execute", on_execute)
        for name in ("after_commit", "after_rollback", "after_soft_rollback"):
            event.listen(factory, name, lambda session, *_: self.leave(session))


class Database:
    """One engine and session factory per process."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        self.sessionmaker = sessionmaker(self.engine, expire_on_commit=False)
        if self.dialect == "sqlite":
            WriteGate().install(self.sessionmaker)

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessionmaker() as s:
            try:
                yield s
                s.commit()
            except BaseException:
                s.rollback()
                raise

    def dispose(self) -> None:
        self.engine.dispose()
