"""Regenerate the README's pictures: a terminal recording of the quick start (asciicast v2, play
it with `asciinema play docs/media/quickstart.cast` or any asciicast player) and screenshots of
the dashboard (Playwright driving Debian's Chromium).

    .venv/bin/python scripts/record.py            # writes docs/media/

It starts its own server on a free port with a fresh data directory, runs the README's quick
start exactly as the README test does, and photographs the pages a newcomer sees.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.services import ForgehubServer, started  # noqa: E402
from tests.test_dashboard import ARGS, CHROMIUM  # noqa: E402
from tests.test_readme import marked_blocks, run_line  # noqa: E402

OUT = ROOT / "docs" / "media"


def record_terminal(work: Path, env: dict[str, str]) -> Path:
    """Run the quick start's commands; write what a terminal showed, with its timing."""
    events: list[list[object]] = []
    clock = 0.0
    for _name, lines in marked_blocks((ROOT / "README.md").read_text()):
        for line in lines:
            events.append([round(clock, 3), "o", f"\x1b[1m$ {line}\x1b[0m\r\n"])
            clock += 0.6
            started_at = time.monotonic()
            r = run_line(line, work, env)
            took = time.monotonic() - started_at
            text = (r.stdout + r.stderr).replace("\n", "\r\n")
            if r.returncode != 0:
                raise SystemExit(f"the quick start failed at {line!r}:\n{r.stderr}")
            events.append([round(clock + min(took, 3.0), 3), "o", text])
            clock += min(took, 3.0) + 0.8
    path = OUT / "quickstart.cast"
    header = {"version": 2, "width": 110, "height": 32, "title": "forgehub quick start"}
    path.write_text("\n".join(json.dumps(x) for x in [header, *events]) + "\n")
    return path


def photograph(url: str, token: str) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(base_url=url, viewport={"width": 1200, "height": 800})
        page.goto("/")
        page.get_by_label("API token").fill(token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/")
        for name, path in [
            ("marketplace", "/"),
            ("module", "/modules/digits"),
            ("jobs", "/jobs"),
            ("storage", "/storage"),
        ]:
            page.goto(path)
            page.wait_for_load_state("networkidle")
            shot = OUT / f"{name}.png"
            page.screenshot(path=str(shot))
            shots.append(shot)
        page.goto("/jobs")
        page.locator("table a").first.click()  # the quick start's training
        page.wait_for_selector(".chart")
        shot = OUT / "training.png"
        page.screenshot(path=str(shot), full_page=True)
        shots.append(shot)
        browser.close()
    return shots


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="fh-record-") as tmp:
        work = Path(tmp) / "clone"
        work.mkdir()
        (work / ".venv").symlink_to(ROOT / ".venv")
        (work / "examples").symlink_to(ROOT / "examples")
        data = Path(tmp) / "data"
        env = {k: v for k, v in os.environ.items() if not k.startswith("FORGEHUB_")}
        env.update(FORGEHUB_DATA_DIR=str(data), HOME=str(Path(tmp) / "home"), COLUMNS="110")
        env["XDG_CONFIG_HOME"] = str(Path(tmp) / "config")
        srv = ForgehubServer(data)
        with started(srv):
            cast = record_terminal(work, env)
            shots = photograph(srv.url, srv.admin_token)
    for p in [cast, *shots]:
        print(f"wrote {p.relative_to(ROOT)} ({p.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
