from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from forgehub.config import Settings
from forgehub.server import create_app
from tests.services import Postgres, started

_db_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres()
    with started(pg):
        yield pg


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store on each back end."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    pg: Postgres = request.getfixturevalue("postgres")
    return pg.create_database(f"t{next(_db_counter)}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = "Bearer " + settings.admin_token_file.read_text().strip()
        yield c


def make_user(client: TestClient, name: str) -> dict[str, str]:
    """Create a user through the API; returns headers that authenticate as them."""
    r = client.post("/api/v1/users", json={"name": name})
    assert r.status_code == 201, r.text
    r = client.post("/api/v1/tokens", json={"name": "t", "user": name})
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


@pytest.fixture(scope="session")
def ceph() -> Iterator[object]:
    from tests.services import CephRGW

    rgw = CephRGW()
    rgw.url = rgw.start()  # type: ignore[attr-defined]
    try:
        yield rgw
    finally:
        rgw.stop()


@pytest.fixture(scope="session")
def ceph_s3(ceph: object) -> str:
    return ceph.url  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="session")
def webdav_url() -> Iterator[str]:
    from tests.services import WsgiDAV

    dav = WsgiDAV()
    try:
        yield dav.start()
    finally:
        dav.stop()


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    from tests.services import ForgehubServer

    srv = ForgehubServer(tmp_path_factory.mktemp("live") / "data")
    with started(srv):
        yield srv


@pytest.fixture(scope="session")
def sciserver() -> Iterator[object]:
    """The SciServer stand-in (tests/sciserver_standin.py): SciServer itself cannot run here."""
    from tests.services import SciServerStandIn

    standin = SciServerStandIn()
    with started(standin):
        yield standin
