"""``forgehub demo``: sample data to try the demo modules with."""

from __future__ import annotations

from pathlib import Path

import typer

from forgehub.cli.client import fail
from forgehub.cli.messages import Console

demo_app = typer.Typer(
    rich_markup_mode=None, help="Sample data for the demo modules.", no_args_is_help=True
)
out = Console(soft_wrap=True)


@demo_app.command("data")
def data(
    dest: Path = typer.Argument(
        Path("."), help="Folder to write into.", show_default="the current folder"
    ),
    per_digit: int = typer.Option(60, "--per-digit", min=5, max=180, help="Images per digit."),
) -> None:
    """Write a sample dataset for `digits` (a folder of labelled PNG images) and a digit image.

    Then: forgehub artifact push digits-dataset --name digits-data;
    forgehub train digits --data digits-data; forgehub module predict digits -f image=digit.png
    """
    try:
        from forgehub.demo.digits import write_samples
    except ImportError as exc:  # pragma: no cover - the demo extra is missing
        fail(f"the demo needs numpy, scikit-learn and pillow (pip install 'forgehub[demo]'): {exc}")
    if (dest / "digits-dataset").exists():
        fail(f"{dest / 'digits-dataset'} already exists")
    dest.mkdir(parents=True, exist_ok=True)
    dataset, image = write_samples(dest, per_digit)
    n = sum(1 for _ in dataset.rglob("*.png"))
    out.print(f"wrote {dataset} ({n} labelled images, one folder per digit) and {image}")
