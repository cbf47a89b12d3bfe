"""The model API inside the platform: authenticated, and trainings are private."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.conftest import make_user
from tests.modelapi_helpers import native_url, wait_state

BASE = "/api/v1/model-api/v2/models/digits"


def test_model_api_needs_a_token(client: TestClient) -> None:
    r = client.post(f"{BASE}/predict/", json={"pixels": [0] * 64}, headers={"Authorization": ""})
    assert r.status_code == 401
    r = client.post(f"{BASE}/predict/", json={"pixels": [0] * 64})
    assert r.status_code == 200 and r.json()["status"] == "OK"


def test_trainings_are_private(client: TestClient) -> None:
    alice = make_user(client, "alice")
    bob = make_user(client, "bob")
    r = client.post(f"{BASE}/train/", params={"epochs": 1, "hidden_size": 8}, headers=alice)
    assert r.status_code == 200, r.text
    tid = r.json()["uuid"]
    assert client.get(f"{BASE}/train/{tid}", headers=bob).status_code == 404
    assert client.delete(f"{BASE}/train/{tid}", headers=bob).status_code == 404
    assert client.get(f"{BASE}/train/", headers=bob).json() == []
    view = native_url(f"{BASE}/train/{tid}")  # forgehub's own view is as private
    assert view == f"/api/v1/model-api/models/digits/trainings/{tid}"
    assert client.get(view, headers=bob).status_code == 404
    assert client.delete(view, headers=bob).status_code == 404
    assert client.get(view.rsplit("/", 1)[0], headers=bob).json() == []
    client.headers.update(alice)
    done = wait_state(client, f"{BASE}/train/{tid}", {"succeeded"})
    assert done["result"]["output"]["epochs"] == 1
    assert [t["uuid"] for t in client.get(f"{BASE}/train/", headers=alice).json()] == [tid]


def test_predictions_count_as_use_in_the_catalogue(client: TestClient) -> None:
    before = client.get("/api/v1/catalog/modules/digits").json()["use_count"]
    for _ in range(3):
        assert client.post(f"{BASE}/predict/", json={"pixels": [0] * 64}).status_code == 200
    client.app.state.model_api.flush_usage()  # type: ignore[attr-defined]
    assert client.get("/api/v1/catalog/modules/digits").json()["use_count"] == before + 3
