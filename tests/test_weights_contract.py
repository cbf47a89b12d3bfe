"""How a module receives a trained version's weights (#16): native modules through
``load(path)``, DEEPaaS modules through the variable their metadata names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from forgehub.module import ModuleError, load


def test_native_module_loads_weights(tmp_path: Path) -> None:
    import numpy as np

    digits = load("digits")
    shipped = digits.predict(digits.validate_predict({"pixels": [0.0] * 64})).body
    w = np.load(digits.obj.weights_path)  # type: ignore[attr-defined]
    layers = {k: w[k] for k in w.files}
    layers[f"b{int(layers['n_layers']) - 1}"] = np.eye(10)[7] * 100  # always 7
    (tmp_path / "digits-weights.npz").write_bytes(b"")
    np.savez(tmp_path / "digits-weights.npz", **layers)
    digits.load_weights(tmp_path)  # the training's output folder
    digits.warm()
    trained = digits.predict(digits.validate_predict({"pixels": [0.0] * 64})).body
    assert trained["predictions"]["labels"][0]["label"] == 7
    assert trained != shipped
    with pytest.raises(ModuleError, match="no digits-weights.npz|cannot"):
        load("digits").load_weights(tmp_path / "missing")


def test_deepaas_module_gets_its_weights_through_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPAAS_WEIGHTS_TEST_PATH", "")  # restored (removed) after the test
    monkeypatch.delenv("DEEPAAS_WEIGHTS_TEST_PATH")
    m = load("tests.modules.deepaas_weights")
    assert m.predict(m.validate_predict({})).body["predictions"]["weights"] == "shipped"
    weights = tmp_path / "w.txt"
    weights.write_text("trained")
    m.load_weights(weights)
    assert os.environ["DEEPAAS_WEIGHTS_TEST_PATH"] == str(weights)
    assert m.predict(m.validate_predict({})).body["predictions"]["weights"] == "trained"


def test_a_module_that_cannot_take_weights_says_so() -> None:
    style = load("tests.modules.deepaas_style")  # no "weights" in its metadata
    with pytest.raises(ModuleError) as err:
        style.load_weights(Path("/nonexistent"))
    assert err.value.status == 501 and "where its weights go" in str(err.value)


def test_the_platform_model_api_keeps_deepaas_modules_as_installed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DEEPaaS module's trained version cannot share the server's process: ?version= is a 501
    with the reason, and without it the module answers as installed."""
    from fastapi.testclient import TestClient

    from forgehub.catalog.service import add_version, get_module
    from forgehub.config import Settings
    from forgehub.server import create_app

    monkeypatch.delenv("DEEPAAS_WEIGHTS_TEST_PATH", raising=False)
    settings = Settings(data_dir=tmp_path / "data", modules=["tests.modules.deepaas_weights"])
    with TestClient(create_app(settings)) as client:
        token = (tmp_path / "data" / "admin.token").read_text().strip()
        client.headers["Authorization"] = f"Bearer {token}"
        with client.app.state.db.session() as s:  # type: ignore[attr-defined]
            m = get_module(s, "deepaas_weights")
            add_version(s, m, "trained-1", source="job x", weights_digest="sha256:" + "0" * 64)
        url = "/api/v1/model-api/v2/models/deepaas_weights/predict/"
        r = client.post(url)
        assert r.status_code == 200 and r.json()["predictions"]["weights"] == "shipped"
        r = client.post(url, params={"version": "trained-1"})
        assert r.status_code == 501, r.text
        assert "batch jobs" in r.json()["message"]
