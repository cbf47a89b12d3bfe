"""A command starts in the time its own imports take: ``forgehub artifact …`` and the other
command groups load their own module, not the whole CLI, the server, the database layer or
the server's configuration (the start-up benchmark times it; this keeps it from creeping
back)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "forgehub.cli.main",
    "forgehub.config",
    "forgehub.server",
    "forgehub.db",
    "sqlalchemy",
    "fastapi",
    "rich",  # made when a command prints, after its request went out
    "rich.syntax",  # httpx's own command-line client would bring it
    "httpx",  # a plain JSON call goes through http.client; streams load httpx when they run
    "pydantic",
)
PROBE = """
import sys
from pathlib import Path
sys.argv = ["forgehub", *sys.argv[1:]]
from forgehub.cli import entry
try:
    entry.main()
except SystemExit:
    pass
print("MODULES", " ".join(sorted(sys.modules)))
"""


def _loaded(
    *args: str, importtime: bool = False, env: dict[str, str] | None = None
) -> tuple[set[str], str]:
    flags = ["-X", "importtime"] if importtime else []
    r = subprocess.run(
        [sys.executable, *flags, "-c", PROBE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
    line = next(x for x in r.stdout.splitlines() if x.startswith("MODULES "))
    return set(line.split()[1:]), r.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("artifact", "ls", "--help"),
        ("job", "ls", "--help"),
        ("storage", "ls", "--help"),
        ("user", "ls", "--help"),
        ("token", "ls", "--help"),
        ("train", "--help"),
        ("deploy", "--help"),
        ("share", "--help"),
    ],
)
def test_a_command_group_loads_only_its_own_module(args: tuple[str, ...]) -> None:
    mods, _ = _loaded(*args)
    mods.discard("httpx._main")  # the placeholder that keeps httpx's CLI out (cli.entry)
    assert "forgehub.cli.entry" in mods
    for heavy in HEAVY:
        assert not any(m == heavy or m.startswith(heavy + ".") for m in mods), heavy


@pytest.mark.serial  # wall time of imports: measured alone
def test_its_imports_stay_under_budget() -> None:
    """``python -X importtime``: what ``forgehub artifact ls`` imports, summed over the
    top-level imports (~100 ms on a quiet machine; the server's app alone takes over a
    second). The bound is loose so a busy machine does not fail it: the module test above is
    the exact guard, this one catches a heavy import creeping in."""
    _, report = _loaded("artifact", "ls", "--help", importtime=True)
    top = [
        int(m.group(1))
        for m in re.finditer(r"import time:\s+\d+ \|\s+(\d+) \| (\S.*)$", report, re.M)
        if not m.group(2).startswith(" ")
    ]
    assert top, report[-2000:]
    assert sum(top) / 1e6 < 0.5, f"{sum(top) / 1e3:.0f} ms of imports"


def test_each_fast_group_dispatches_like_the_whole_cli() -> None:
    """Every group the entry point loads on its own answers as a group (its commands listed),
    as it does inside the whole CLI."""
    from forgehub.cli.entry import GROUPS

    for name in GROUPS:
        r = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and "Commands" in r.stdout, (name, r.stdout, r.stderr)
        assert f"forgehub {name}" in r.stdout, (name, r.stdout)


def test_each_fast_top_level_command_answers_as_in_the_whole_cli() -> None:
    """`forgehub train|deploy|share|unshare` load only their module, and take the options the
    whole CLI's same command does."""
    from typer.main import get_command

    from forgehub.cli.entry import COMMANDS
    from forgehub.cli.main import app

    whole = get_command(app)
    for name in COMMANDS:
        r = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", name, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 0 and f"forgehub {name}" in r.stdout, (name, r.stdout, r.stderr)
        options = {o for p in whole.commands[name].params for o in p.opts}  # type: ignore[attr-defined]
        assert options and all(o in r.stdout for o in options if o.startswith("--")), name


def test_checking_a_folder_before_a_push_loads_no_storage_layer(tmp_path: Path) -> None:
    """``forgehub artifact push FOLDER`` first works out the folder's digest and asks the server
    whether it has it (an unchanged re-push ends there): neither needs the storage adapters,
    pydantic or httpx. The server here is unreachable, so the command stops after that
    question."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.txt").write_text("a")
    mods, _ = _loaded(
        "artifact",
        "push",
        str(tmp_path / "data"),
        "--server",
        "http://127.0.0.1:9",
        "--token",
        "t",
        env={"FORGEHUB_CACHE_DIR": str(tmp_path / "cache")},  # the digests it remembers
    )
    mods.discard("httpx._main")
    assert "forgehub.artifacts.digests" in mods  # it did get as far as the digest
    printing = {"rich"}  # a spinner while it reads, and the error message
    for heavy in (*(set(HEAVY) - printing), "forgehub.storage", "forgehub.artifacts.content"):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in mods), heavy


def test_an_unchanged_repush_loads_no_printing_library(tmp_path: Path) -> None:
    """A re-push of unchanged content is one question and one line of answer: nothing is read,
    so no spinner, and the answer, going to a pipe, is written without rich (a third of such
    a command's start). The line is the one a terminal would show."""
    from tests.services import ForgehubServer

    srv = ForgehubServer(tmp_path / "data")
    srv.start()
    try:
        f = tmp_path / "weights.bin"
        f.write_bytes(os.urandom(100_000))
        env = {
            "FORGEHUB_URL": srv.url,
            "FORGEHUB_TOKEN": srv.admin_token,
            "FORGEHUB_CACHE_DIR": str(tmp_path / "cache"),
        }
        first = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", "artifact", "push", str(f), "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert first.returncode == 0, first.stderr
        digest = json.loads(first.stdout)["digest"]
        mods, _ = _loaded("artifact", "push", str(f), "--name", "w:v2", env=env)
        assert not any(m == "rich" or m.startswith("rich.") for m in mods)
        again = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", "artifact", "push", str(f), "--name", "w:v2"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, **env},
        )
        assert again.returncode == 0, again.stderr
        assert again.stdout.splitlines() == [
            f"{digest}  file  97.7 KB  (uploaded to storage: 0 B)  tags: w:v2"
        ]
        assert again.stderr == ""  # no spinner
    finally:
        srv.stop()


def test_plain_output_is_what_rich_prints_to_a_pipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """JSON and lines written without rich (not a terminal) are byte for byte what rich writes
    there; markup-like text in a line is printed as it is."""
    import io

    from rich.console import Console as RichConsole

    from forgehub.cli.messages import Console

    doc = json.dumps({"name": "Zoë [b]", "n": [1, 2.5, None], "ok": True, "nested": {"a": {}}})
    line = "sha256:abc  file  1 KB  tags: x[bold]y, [red]z[/red]"
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    monkeypatch.delenv("TTY_COMPATIBLE", raising=False)
    ours = io.StringIO()
    monkeypatch.setattr(sys, "stdout", ours)
    plain = Console(soft_wrap=True)
    plain.print_json(doc)
    plain.line(line)
    assert plain._real is None  # rich was not used
    theirs = io.StringIO()
    real = RichConsole(file=theirs, soft_wrap=True)
    real.print_json(doc)
    real.print(line, markup=False, highlight=False)
    assert ours.getvalue() == theirs.getvalue()


def test_a_direct_transfer_loads_no_storage_layer() -> None:
    """A push or pull straight to a store (presigned URLs) moves bytes with the standard
    library: the CLI's artifact commands and the transfer engine import neither pydantic nor
    the storage adapters (~150 ms before the first byte moved)."""
    probe = (
        "import sys, forgehub.cli.artifacts, forgehub.artifacts.direct, forgehub.storage.errors\n"
        "print(' '.join(sorted(sys.modules)))"
    )
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    mods = set(r.stdout.split())
    assert "forgehub.artifacts.direct" in mods
    for heavy in (
        "pydantic",
        "forgehub.storage.base",
        "forgehub.storage.registry",
        "forgehub.artifacts.content",
        "rich",
        "httpx",
    ):
        assert not any(m == heavy or m.startswith(heavy + ".") for m in mods), heavy
