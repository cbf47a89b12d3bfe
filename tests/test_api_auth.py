"""Users, tokens and ownership over HTTP."""

from __future__ import annotations

import os
import stat

from fastapi.testclient import TestClient

from forgehub.config import Settings
from forgehub.server import create_app
from tests.conftest import make_user


def test_healthz_is_public(client: TestClient) -> None:
    r = client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_admin_token_file_is_private(client: TestClient, settings: Settings) -> None:
    mode = stat.S_IMODE(os.stat(settings.admin_token_file).st_mode)
    assert mode == 0o600
    assert client.get("/api/v1/users/me").json()["role"] == "admin"


def test_protected_route_without_token_is_401_problem(client: TestClient) -> None:
    r = client.get("/api/v1/users", headers={"Authorization": ""})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert "Bearer" in r.json()["detail"]
    r = client.get("/api/v1/users", headers={"Authorization": "Bearer fh_nope"})
    assert r.status_code == 401 and "invalid token" in r.json()["detail"]


def test_openapi_is_served(client: TestClient) -> None:
    spec = client.get("/api/v1/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert "/api/v1/tokens" in spec["paths"]


def test_bad_input_is_422_with_field(client: TestClient) -> None:
    r = client.post("/api/v1/users", json={"name": "Bad Name!"})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["errors"][0]["field"] == "name"
    r = client.post(
        "/api/v1/users", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422


def test_users_cannot_touch_each_others_tokens(client: TestClient) -> None:
    alice = make_user(client, "alice")
    bob = make_user(client, "bob")
    # a user sees only themselves and their own tokens
    assert [u["name"] for u in client.get("/api/v1/users", headers=alice).json()] == ["alice"]
    alice_tokens = client.get("/api/v1/tokens", headers=alice).json()
    assert [t["user"] for t in alice_tokens] == ["alice"]
    # bob cannot revoke alice's token, nor create users or tokens for her
    tid = alice_tokens[0]["id"]
    assert client.delete(f"/api/v1/tokens/{tid}", headers=bob).status_code == 404
    assert client.post("/api/v1/users", json={"name": "eve"}, headers=bob).status_code == 403
    r = client.post("/api/v1/tokens", json={"name": "x", "user": "alice"}, headers=bob)
    assert r.status_code == 403
    # the token still works; once alice revokes it, it stops working
    assert client.get("/api/v1/users/me", headers=alice).status_code == 200
    assert client.delete(f"/api/v1/tokens/{tid}", headers=alice).status_code == 200
    r = client.get("/api/v1/users/me", headers=alice)
    assert r.status_code == 401 and "revoked" in r.json()["detail"]
    # the admin sees everyone
    names = {u["name"] for u in client.get("/api/v1/users").json()}
    assert names == {"admin", "alice", "bob"}


def test_token_value_shown_once(client: TestClient) -> None:
    r = client.post("/api/v1/tokens", json={"name": "ci", "expires_in_days": 3})
    assert r.status_code == 201
    value = r.json()["token"]
    listed = client.get("/api/v1/tokens").text
    assert value not in listed


def test_restart_keeps_admin_token(settings: Settings) -> None:
    with TestClient(create_app(settings)):
        first = settings.admin_token_file.read_text()
    with TestClient(create_app(settings)) as c:
        assert settings.admin_token_file.read_text() == first
        r = c.get("/api/v1/users/me", headers={"Authorization": f"Bearer {first.strip()}"})
        assert r.status_code == 200


def test_first_requests_at_once_share_one_default_connection(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    carol = make_user(client, "carol")
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: client.get("/api/v1/storage/connections", headers=carol), range(8))
        )
    assert [r.status_code for r in results] == [200] * 8, [r.text for r in results]
    assert {tuple(c["name"] for c in r.json()) for r in results} == {("default",)}


def test_api_docs_work_offline(client: TestClient) -> None:
    html = client.get("/api/v1/docs").text
    assert "/static/swagger/swagger-ui-bundle.js" in html and "cdn.jsdelivr" not in html
    assert client.get("/static/swagger/swagger-ui-bundle.js").status_code == 200
