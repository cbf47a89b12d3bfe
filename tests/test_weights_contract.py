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
    monkeypatch.delenv("DEEPAAS_WEIGHTS_TEST_PATH", raising=False)
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
