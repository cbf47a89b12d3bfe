"""Duties and wake-ups between servers: PostgreSQL advisory locks and LISTEN/NOTIFY (file locks
and in-process wake-ups on SQLite), against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from pathlib import Path

import pytest

from forgehub.db import upgrade
from forgehub.db.coordination import Bus, Duties, exclusive
from tests.services import Postgres


@pytest.fixture(scope="module")
def pg_url(postgres: Postgres) -> str:
    url = postgres.create_database(f"coord_{uuid.uuid4().hex[:8]}")
    upgrade(url)
    return url


@pytest.mark.parametrize("kind", ["postgres", "sqlite"])
def test_one_holder_per_duty_and_the_next_takes_over(
    kind: str, pg_url: str, tmp_path: Path
) -> None:
    url = pg_url if kind == "postgres" else f"sqlite:///{tmp_path / 'f.db'}"
    a, b = Duties(url, tmp_path / "run"), Duties(url, tmp_path / "run")
    try:
        assert a.holds("dispatcher") and a.holds("dispatcher")  # kept, not taken twice
        assert not b.holds("dispatcher")
        assert b.holds("reaper") and not a.holds("reaper")  # duties spread
        assert a.held() == ["dispatcher"] and b.held() == ["reaper"]
        a.close()  # a server stopping (or dying: its connection or file closes)
        assert b.holds("dispatcher")
        assert not a.holds("dispatcher")
    finally:
        a.close()
        b.close()


def test_a_held_duty_is_lost_with_its_connection(pg_url: str, tmp_path: Path) -> None:
    """If the database drops the lock's connection, the holder stops believing it holds the
    duty at its next check (within a second) instead of working beside the new holder."""
    import psycopg

    a, b = Duties(pg_url, tmp_path), Duties(pg_url, tmp_path)
    try:
        assert a.holds("pipelines")
        pid = a._conn.info.backend_pid
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert b.holds("pipelines")
        time.sleep(1.1)
        assert not a.holds("pipelines")
    finally:
        a.close()
        b.close()


def test_exclusive_makes_starting_servers_wait_in_turn(pg_url: str, tmp_path: Path) -> None:
    inside: list[str] = []
    order: list[str] = []

    def start(name: str) -> None:
        with exclusive("startup-test", pg_url, tmp_path):
            inside.append(name)
            assert len(inside) == 1, inside
            time.sleep(0.2)
            order.append(name)
            inside.remove(name)

    threads = [threading.Thread(target=start, args=(f"s{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(order) == ["s0", "s1", "s2"]


def test_a_wake_up_reaches_the_other_servers_once(pg_url: str) -> None:
    a, b = Bus(pg_url), Bus(pg_url)
    got_a: list[str] = []
    got_b: list[str] = []
    a.subscribe("jobs", got_a.append)
    b.subscribe("jobs", got_b.append)
    a.start()
    b.start()
    try:
        assert a.connected.wait(10) and b.connected.wait(10)
        got_a.clear()
        got_b.clear()  # the catch-up wake-up each gives at connect
        a.publish("jobs", "j1")
        deadline = time.monotonic() + 5
        while "j1" not in got_b and time.monotonic() < deadline:
            time.sleep(0.01)
        assert "j1" in got_b
        time.sleep(0.3)
        assert got_a == ["j1"]  # its own: at once, and not again from the database

        async def waiter() -> bool:
            loop = asyncio.get_running_loop()
            loop.call_later(0.1, a.publish, "job", "abc")
            return await b.wait("job", "abc", 5)

        assert asyncio.run(waiter())
    finally:
        a.stop()
        b.stop()


def test_on_sqlite_wake_ups_stay_in_the_process() -> None:
    bus = Bus("sqlite:///:memory:")
    got: list[str] = []
    bus.subscribe("jobs", got.append)
    bus.start()  # nothing to listen to
    bus.publish("jobs", "x")
    assert got == ["x"]

    async def timed_out() -> bool:
        return await bus.wait("job", "nothing", 0.05)

    assert asyncio.run(timed_out()) is False
    bus.stop()
