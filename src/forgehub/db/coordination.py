"""Several servers on one database: who does each background duty, and wake-ups between them.

forgehub writes no coordination service of its own; the database it already has does both:

* :class:`Duties` — each background duty (dispatching jobs, reaping lapsed leases, deployments,
  pipelines) is held by one server at a time. On PostgreSQL a duty is a session advisory lock
  held on a connection of this server's own: when a server dies, PostgreSQL closes its
  connection, the lock is free, and the next server's round (at most half a second later) takes
  it. On SQLite, which lives on one host, a duty is an exclusive ``flock`` on a file of the data
  directory, so ``forgehub serve --workers N`` runs one of each too.
* :class:`Bus` — wake-ups across servers through PostgreSQL ``LISTEN/NOTIFY`` (in one process
  on SQLite). A wake-up only says "look again": the stored rows are the truth, so a missed
  notification costs one poll interval and never loses anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger("forgehub.cluster")

LOCK_CLASS = 0x4648  # "FH": the first key of forgehub's advisory locks
CHECK_EVERY_S = 1.0  # how often a holder makes sure its lock connection still stands
CHANNEL = "forgehub"


def _conninfo(db_url: str) -> str:
    """A libpq URL from a SQLAlchemy one (``postgresql+psycopg://`` → ``postgresql://``)."""
    from sqlalchemy.engine import make_url

    url = make_url(db_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def _key(name: str) -> int:
    """A duty's second advisory-lock key: a stable signed 32-bit number of its name."""
    n = zlib.crc32(name.encode())
    return n - (1 << 32) if n >= 1 << 31 else n


@contextlib.contextmanager
def exclusive(name: str, db_url: str, lock_dir: Path) -> Iterator[None]:
    """One server at a time in the block (migrations, first-start set-up): several starting
    at once on one database wait for each other. PostgreSQL: an advisory lock; SQLite: a
    ``flock`` in ``lock_dir``."""
    if db_url.startswith("postgresql"):
        import psycopg

        with psycopg.connect(_conninfo(db_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute("SELECT pg_advisory_lock(%s, %s)", (LOCK_CLASS, _key(name)))
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", (LOCK_CLASS, _key(name)))
        return
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Duties:
    """Which background duties this server holds (see the module's docstring)."""

    def __init__(self, db_url: str, lock_dir: Path) -> None:
        self.postgres = db_url.startswith("postgresql")
        self._conninfo = _conninfo(db_url) if self.postgres else ""
        self._lock_dir = lock_dir
        self._conn: Any = None
        self._held: dict[str, Any] = {}  # duty → True (PostgreSQL) or its locked file (SQLite)
        self._checked = 0.0
        self._retry_at = 0.0  # after a failed connection: not before this (no 5 s stall a round)
        self._lock = threading.Lock()

    def holds(self, name: str) -> bool:
        """Does this server hold ``name``? Takes it when it is free."""
        with self._lock:
            if self.postgres:
                return self._holds_pg(name)
            return self._holds_file(name)

    def held(self) -> list[str]:
        with self._lock:
            return sorted(self._held)

    def _holds_file(self, name: str) -> bool:
        if name in self._held:
            return True
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._lock_dir / f"duty-{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._held[name] = fd
        log.info("duty %s: taken by this server (pid %d)", name, os.getpid())
        return True

    def _holds_pg(self, name: str) -> bool:
        import psycopg

        if self._conn is None and time.monotonic() < self._retry_at:
            return False
        try:
            if self._conn is None:
                self._conn = psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=5, application_name="duties"
                )
                self._checked = time.monotonic()
            elif self._held and time.monotonic() - self._checked >= CHECK_EVERY_S:
                self._conn.execute("SELECT 1")  # still connected, so the locks are still ours
                self._checked = time.monotonic()
            if name in self._held:
                return True
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (LOCK_CLASS, _key(name))
            ).fetchone()
        except psycopg.Error as exc:
            if self._held:
                log.warning("duties lost with the database connection: %s", exc)
            self._drop_connection()
            self._retry_at = time.monotonic() + 2.0
            return False
        if row and row[0]:
            self._held[name] = True
            log.info("duty %s: taken by this server (pid %d)", name, os.getpid())
            return True
        return False

    def _drop_connection(self) -> None:
        self._held.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                self._conn.close()
        self._conn = None

    def close(self) -> None:
        """Let the duties go (a clean stop hands them over at once)."""
        with self._lock:
            if self.postgres:
                if self._conn is not None and self._held:
                    # released before the answer comes back: closing the connection alone lets
                    # them go only once its backend has ended, a moment later
                    with contextlib.suppress(Exception):
                        self._conn.execute("SELECT pg_advisory_unlock_all()")
                self._drop_connection()
                return
            for fd in self._held.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._held.clear()


class Bus:
    """Wake-ups by topic and key, to this process and (on PostgreSQL) to every other server."""

    def __init__(self, db_url: str) -> None:
        self.postgres = db_url.startswith("postgresql")
        self._conninfo = _conninfo(db_url) if self.postgres else ""
        self._subscribers: dict[str, list[Callable[[str], None]]] = {}
        self._waiters: dict[tuple[str, str], set[tuple[asyncio.AbstractEventLoop, Any]]] = {}
        self._waiters_lock = threading.Lock()
        self._out: Any = None  # the connection NOTIFY goes out on
        self._out_pid = 0  # its backend: our own notifications come back from it, skipped
        self._out_lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.connected = threading.Event()  # the listener is listening (PostgreSQL)

    # -- this process ---------------------------------------------------------------------------

    def subscribe(self, topic: str, fn: Callable[[str], None]) -> None:
        """``fn(key)`` runs (in the publisher's or the listener's thread) on each wake-up."""
        self._subscribers.setdefault(topic, []).append(fn)

    async def wait(self, topic: str, key: str, timeout: float) -> bool:
        """Until ``topic``/``key`` is published or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        event = asyncio.Event()
        entry = (loop, event)
        with self._waiters_lock:
            self._waiters.setdefault((topic, key), set()).add(entry)
        try:
            await asyncio.wait_for(event.wait(), timeout)
            return True
        except TimeoutError:
            return False
        finally:
            with self._waiters_lock:
                waiting = self._waiters.get((topic, key))
                if waiting is not None:
                    waiting.discard(entry)
                    if not waiting:
                        del self._waiters[(topic, key)]

    def _deliver(self, topic: str, key: str) -> None:
        for fn in self._subscribers.get(topic, ()):
            try:
                fn(key)
            except Exception:  # noqa: BLE001 - one subscriber must not stop the others
                log.exception("bus: a subscriber of %s failed", topic)
        with self._waiters_lock:
            waiting = list(self._waiters.get((topic, key), ()))
        for loop, event in waiting:
            with contextlib.suppress(RuntimeError):  # its loop has closed
                loop.call_soon_threadsafe(event.set)

    # -- every server ---------------------------------------------------------------------------

    def publish(self, topic: str, key: str = "", here: bool = True) -> None:
        """Wake ``topic``/``key`` on every other server, and here at once unless ``here`` is
        False (a report meant for the others)."""
        if here:
            self._deliver(topic, key)
        if not self.postgres:
            return
        import psycopg

        with self._out_lock:
            for _attempt in range(2):
                try:
                    if self._out is None:
                        self._out = psycopg.connect(
                            self._conninfo, autocommit=True, connect_timeout=5
                        )
                        self._out_pid = self._out.info.backend_pid
                    self._out.execute("SELECT pg_notify(%s, %s)", (CHANNEL, f"{topic}:{key}"))
                    return
                except psycopg.Error as exc:
                    log.debug("bus: cannot notify (%s); the others poll", exc)
                    with contextlib.suppress(Exception):
                        self._out.close()
                    self._out = None

    def start(self) -> None:
        if not self.postgres or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._listen, name="forgehub-bus", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        with self._out_lock:
            if self._out is not None:
                with contextlib.suppress(Exception):
                    self._out.close()
                self._out = None

    def _listen(self) -> None:
        import psycopg

        backoff = 0.2
        while not self._stopping.is_set():
            try:
                with psycopg.connect(
                    self._conninfo, autocommit=True, connect_timeout=5, application_name="bus"
                ) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.connected.set()
                    backoff = 0.2
                    # whatever was published while we were not listening: look again
                    for topic in list(self._subscribers):
                        self._deliver(topic, "")
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=0.5, stop_after=64):
                            if note.pid == self._out_pid:
                                continue  # delivered here when it was published
                            topic, _, key = note.payload.partition(":")
                            self._deliver(topic, key)
            except psycopg.Error as exc:
                self.connected.clear()
                log.warning("bus: listening stopped (%s); reconnecting", exc)
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
        self.connected.clear()
