"""The adversarial suite: a second user, bob, attacks the first, alice, on one shared server.

``world`` is one platform (in-process, SQLite) with alice, bob and the admin, where users may
keep local stores under ``shared_root`` (the admin's local_storage_roots).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from forgehub.config import Settings
from forgehub.server import create_app


@dataclass
class World:
    client: TestClient
    settings: Settings
    shared_root: Path
    admin: dict[str, str]
    alice: dict[str, str]
    bob: dict[str, str]
    alice_token_id: str

    def as_(self, who: dict[str, str] | None, method: str, url: str, **kw: Any) -> Any:
        headers = dict(kw.pop("headers", {}) or {})
        headers.setdefault("Authorization", who["Authorization"] if who else "")
        return self.client.request(method, url, headers=headers, **kw)

    def push(self, who: dict[str, str], data: bytes, **params: str) -> dict[str, Any]:
        r = self.as_(who, "POST", "/api/v1/artifacts", content=data, params=params)
        assert r.status_code == 201, r.text
        return dict(r.json())


def user(c: TestClient, admin: dict[str, str], name: str) -> tuple[dict[str, str], str]:
    assert c.post("/api/v1/users", json={"name": name}, headers=admin).status_code == 201
    r = c.post("/api/v1/tokens", json={"name": "t", "user": name}, headers=admin)
    assert r.status_code == 201, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}, r.json()["id"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    root = tmp_path / "shared"
    root.mkdir()
    settings = Settings(data_dir=tmp_path / "data", local_storage_roots=[root])
    with TestClient(create_app(settings)) as c:
        admin = {"Authorization": "Bearer " + settings.admin_token_file.read_text().strip()}
        alice, alice_token_id = user(c, admin, "alice")
        bob, _ = user(c, admin, "bob")
        yield World(c, settings, root, admin, alice, bob, alice_token_id)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_key(digest: str) -> str:
    h = digest.split(":", 1)[1]
    return f"blobs/sha256/{h[:2]}/{h}"
