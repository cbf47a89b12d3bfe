"""`forgehub module ...` without HTTP."""

from __future__ import annotations

import json
from pathlib import Path

from sklearn.datasets import load_digits
from typer.testing import CliRunner

from forgehub.cli.main import app
from tests.modelapi_helpers import STYLE, digit_png

runner = CliRunner()


def test_module_ls_lists_digits() -> None:
    r = runner.invoke(app, ["module", "ls", "--json"])
    assert r.exit_code == 0, r.output
    assert {
        "name": "digits",
        "target": "forgehub.demo.digits:DigitsModule",
        "kind": "native",
    } in json.loads(r.output)


def test_predict_with_file_and_options(tmp_path: Path) -> None:
    png, label = digit_png(3)
    img = tmp_path / "d.png"
    img.write_bytes(png)
    r = runner.invoke(
        app, ["module", "predict", "digits", "--file", f"image={img}", "--top-k", "2"]
    )
    assert r.exit_code == 0, r.output
    labels = json.loads(r.stdout)["predictions"]["labels"]
    assert len(labels) == 2 and labels[0]["label"] == label
    out = tmp_path / "a.png"
    r = runner.invoke(
        app,
        [
            "module",
            "predict",
            "digits",
            "-f",
            f"image={img}",
            "--arg",
            "accept=image/png",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_predict_every_field_type_on_deepaas_module(tmp_path: Path) -> None:
    data = tmp_path / "notes.txt"
    data.write_text("hello")
    r = runner.invoke(
        app,
        [
            "module",
            "predict",
            STYLE,
            "--text",
            "hi",
            "--count",
            "4",
            "--flag",
            "true",
            "--tags",
            "x",
            "--tags",
            "y",
            "--options",
            '{"a": [1]}',
            "--ratio",
            "0.1",
            "-f",
            f"data={data}",
        ],
    )
    assert r.exit_code == 0, r.output
    echo = json.loads(r.stdout)
    assert echo["count"] == 4 and echo["flag"] is True and echo["tags"] == ["x", "y"]
    assert echo["options"] == {"a": [1]} and echo["file"]["size"] == 5
    assert echo["file"]["is_deepaas_uploaded_file"] is True


def test_predict_errors_are_messages_not_tracebacks(tmp_path: Path) -> None:
    r = runner.invoke(app, ["module", "predict", "digits", "--top-k", "0", "-a", "pixels=[1,2]"])
    assert r.exit_code == 1
    assert "top_k" in r.output and "pixels" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["module", "predict", "digits", "--nope", "1"])
    assert r.exit_code == 1 and "has no argument 'nope'" in r.output
    r = runner.invoke(app, ["module", "predict", "no-such-module"])
    assert r.exit_code == 1 and "no module named" in r.output
    r = runner.invoke(app, ["module", "predict", "digits", "-f", "image=/does/not/exist"])
    assert r.exit_code == 1 and "is not a file" in r.output


def test_train_digits_from_cli(tmp_path: Path) -> None:
    import numpy as np

    d = load_digits()
    dataset = tmp_path / "ds.npz"
    np.savez(dataset, X=d.data[:600], y=d.target[:600])
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "module",
            "train",
            "digits",
            "--epochs",
            "3",
            "--hidden-size",
            "16",
            "--input",
            f"dataset={dataset}",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert (out / "digits-weights.npz").exists()
    # the trained weights work
    from forgehub.demo.digits import DigitsModule

    m = DigitsModule(out / "digits-weights.npz")
    assert m.probabilities(d.data[:5]).shape == (5, 10)


def test_deepaas_cli_syntax(tmp_path: Path) -> None:
    """deepaas-cli users type --demo_image PATH: a file argument's value is the file to send;
    hyphens and underscores both work, and a binary result goes to -o."""
    image = tmp_path / "cat.png"
    image.write_bytes(bytes(range(256)) * 4)
    old = "tests.modules.deepaas_old"
    r = runner.invoke(
        app,
        ["module", "predict", old, "--demo_image", str(image), "--demo-int", "3"]
        + ["--demo_list", "4", "--demo_list", "5"],
    )
    assert r.exit_code == 0, r.output
    got = json.loads(r.stdout)["predictions"]
    assert got["demo_image"] == {"name": "cat.png", "size": 1024}
    assert got["demo_int"] == 3 and got["demo_list"] == [4, 5]
    out = tmp_path / "out.bin"
    r = runner.invoke(
        app,
        ["module", "predict", old, "--demo_image", str(image), "--demo_int", "1"]
        + ["--accept", "image/*", "-o", str(out)],
    )
    assert r.exit_code == 0, r.output
    assert out.read_bytes() == image.read_bytes()  # the module answered with the upload
    r = runner.invoke(app, ["module", "predict", old, "--demo_image", "/no/such.png"])
    assert r.exit_code != 0 and "--demo_image: /no/such.png is not a file" in r.output
    assert "Traceback" not in r.output
