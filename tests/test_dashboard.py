"""The dashboard, end to end: headless Chromium (Debian's) drives a real server through
Playwright. No mocks. Each test saves screenshots under test-screenshots/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.services import ForgehubServer, missing, started

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-screenshots"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("dash") / "data",
        FORGEHUB_CACHE_DIR=str(tmp_path_factory.mktemp("cache")),
    )
    with started(srv):
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.path.exists(CHROMIUM):
        missing("Chromium (apt chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright (pip install playwright)")
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            b.close()


class Session:
    """A signed-in browser page that fails the test on any console error."""

    def __init__(self, browser: Any, server: ForgehubServer, token: str, **ctx: Any) -> None:
        self.server = server
        self.context = browser.new_context(base_url=server.url, accept_downloads=True, **ctx)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto("/")  # a visitor sees the marketplace, and signs in from its header
        self.page.get_by_role("link", name="Sign in").click()
        self.page.wait_for_url(lambda url: "/login?next=" in url)
        self.page.get_by_label("API token").fill(token)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(f"{server.url}/")

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    def close(self) -> None:
        self.context.close()
        assert not self.errors, f"console errors: {self.errors}"


def unlabelled_controls(page: Any) -> list[str]:
    return list(
        page.evaluate(
            """() => [...document.querySelectorAll(
                      'input:not([type=hidden]), select, textarea, button')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                             && !(e.tagName === 'BUTTON' && e.textContent.trim()))
                .map(e => e.outerHTML.slice(0, 80))"""
        )
    )


def digit_png(tmp: Path) -> tuple[Path, int]:
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    i = 11
    img = Image.fromarray((d.images[i] / 16 * 255).astype("uint8"), "L").resize((64, 64))
    path = tmp / f"digit-{d.target[i]}.png"
    img.save(path)
    return path, int(d.target[i])


def test_search_open_digits_and_predict_an_image(
    browser: Any, server: ForgehubServer, tmp_path: Path
) -> None:
    s = Session(browser, server, server.admin_token)
    page = s.page
    page.get_by_label("Search modules").fill("digits")
    page.get_by_role("button", name="Search").click()
    card = page.locator(".card", has=page.locator("a[href='/modules/digits']"))
    assert "trainable" in card.inner_text()
    s.shot("1-marketplace-search")
    card.get_by_role("link").click()
    page.wait_for_url("**/modules/digits")
    assert unlabelled_controls(page) == []
    image, label = digit_png(tmp_path)
    page.get_by_label("Image").set_input_files(str(image))
    page.get_by_role("button", name="Predict").click()
    result = page.locator("#result-json")
    result.wait_for()
    text = result.inner_text()
    best = text.split('"label":', 1)[1].split()[0]  # the first (most likely) label
    assert best == str(label), text
    s.shot("1-predict-result")
    # a bad argument shows its error next to the field
    page.get_by_label("Top K").fill("99")
    page.get_by_role("button", name="Predict").click()
    err = page.locator('.field[data-name="top_k"] .field-error')
    err.wait_for()
    assert err.inner_text()
    s.shot("1-predict-inline-error")
    s.close()


def test_train_watch_publish(browser: Any, server: ForgehubServer) -> None:
    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/modules/digits")
    page.get_by_role("link", name="Train digits").click()
    page.wait_for_url("**/modules/digits/train")
    assert unlabelled_controls(page) == []
    page.get_by_label("Epochs").fill("8")
    page.get_by_label("Epoch Delay").fill("0.6")
    page.get_by_role("button", name="Start training").click()
    page.wait_for_url("**/jobs/*")
    chart = page.locator('.chart[data-metric="val_accuracy"] svg')
    chart.wait_for(timeout=60_000)
    first = chart.get_attribute("aria-label")
    page.wait_for_function(
        "f => document.querySelector('.chart[data-metric=val_accuracy] svg')"
        ".getAttribute('aria-label') !== f",
        arg=first,
        timeout=30_000,
    )  # the plot grew while the job ran
    assert "epoch" in page.locator("#log").inner_text()
    s.shot("2-job-running")
    page.locator("#state", has_text="succeeded").wait_for(timeout=90_000)
    page.wait_for_load_state()
    page.locator("#log", has_text="epoch 8/8").wait_for()
    page.get_by_label("Version name").fill("browser-trained")
    page.get_by_role("button", name="Publish as a pre-trained version").click()
    page.get_by_text("Published as").wait_for()
    s.shot("2-job-published")
    page.goto("/?category=pre-trained")
    card = page.locator(".card", has=page.locator("a[href='/modules/digits']"))
    assert "pre-trained" in card.inner_text()
    page.goto("/modules/digits")
    row = page.locator("tr", has_text="browser-trained")
    assert "pre-trained" in row.inner_text()
    s.shot("2-marketplace-pre-trained")
    s.close()


def test_upload_and_download_an_artifact(
    browser: Any, server: ForgehubServer, tmp_path: Path
) -> None:
    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/storage")
    assert unlabelled_controls(page) == []
    data = os.urandom(3 << 20) + b"end"
    src = tmp_path / "measurements.bin"
    src.write_bytes(data)
    page.get_by_label("File").set_input_files(str(src))
    page.get_by_label("Name (optional)").fill("measurements")
    page.get_by_role("button", name="Upload").click()
    page.locator("#upload-status", has_text="uploaded").wait_for()
    page.wait_for_load_state("load")
    row = page.locator("#artifacts tr", has_text="measurements.bin")
    row.wait_for()
    s.shot("3-storage-uploaded")
    with page.expect_download() as dl:
        row.get_by_role("link", name="Download").click()
    out = tmp_path / "back.bin"
    dl.value.save_as(out)
    assert out.read_bytes() == data
    # the test button of a connection reports
    page.get_by_role("button", name="Test default").click()
    page.locator(".test-result", has_text="ok").wait_for()
    s.close()


def test_a_second_user_sees_none_of_the_first_users_work(
    browser: Any, server: ForgehubServer
) -> None:
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=admin) as c:
        job = c.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]}).json()
        c.post("/api/v1/artifacts", params={"filename": "secret.txt"}, content=b"secret")
        assert c.post("/api/v1/users", json={"name": "bob"}).status_code == 201
        token = c.post("/api/v1/tokens", json={"name": "t", "user": "bob"}).json()["token"]
    s = Session(browser, server, token, viewport={"width": 375, "height": 800})
    page = s.page
    page.goto("/jobs")
    assert "No jobs yet" in page.inner_text("main")
    s.shot("4-bob-jobs-narrow")
    # no horizontal scrolling on a narrow screen
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
    r = page.goto(f"/jobs/{job['id']}")
    assert r.status == 404 and "no job" in page.inner_text("main").lower()
    assert all("404" in e for e in s.errors)  # the browser logs the 404 we asked for
    s.errors.clear()
    page.goto("/storage")
    assert "secret.txt" not in page.inner_text("main")
    s.shot("4-bob-storage")
    # keyboard: the skip link is the first stop and leads to the content
    page.goto("/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.goto("/tokens")
    page.get_by_label("What is it for?").fill("laptop")
    page.get_by_role("button", name="Create token").click()
    assert page.locator("#new-token").inner_text().startswith("fh_")
    page.get_by_role("button", name="Revoke laptop").click()
    assert "revoked" in page.locator("tr", has_text="laptop").inner_text()
    # sign out ends the session
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/login")
    page.goto("/jobs")
    assert "/login" in page.url
    s.close()


def sign_in(c: httpx.Client, token: str) -> httpx.Response:
    """Sign in as a browser does: load the form (its CSRF cookie), post it with the token."""
    c.get("/login")
    csrf = c.cookies["forgehub_csrf"]
    return c.post(
        "/login", data={"token": token, "next": "/", "csrf": csrf}, follow_redirects=False
    )


def test_cookie_requests_need_the_csrf_token(server: ForgehubServer) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False) as c:
        # the sign-in form has its own CSRF token: a post without it is refused
        r = c.post("/login", data={"token": server.admin_token, "next": "/"})
        assert r.status_code == 403 and "expired" in r.text
        assert "forgehub_session" not in r.cookies
        r = sign_in(c, server.admin_token)
        assert r.status_code == 303
        cookie = r.cookies["forgehub_session"]
        assert "httponly" in r.headers.get_list("set-cookie")[0].lower()
        assert "samesite=lax" in r.headers.get_list("set-cookie")[0].lower()
        c.cookies.set("forgehub_session", cookie)
        assert c.get("/api/v1/jobs").status_code == 200  # reads are fine
        r = c.post("/api/v1/jobs", json={"kind": "command", "command": ["true"]})
        assert r.status_code == 403 and "CSRF" in r.json()["detail"]
        assert c.post("/logout", data={"csrf": "wrong"}).status_code == 403


def test_add_a_storage_connection_from_the_dashboard(
    browser: Any, server: ForgehubServer, tmp_path: Path
) -> None:
    s = Session(browser, server, server.admin_token)
    page = s.page
    page.goto("/storage")
    page.get_by_text("Add a storage connection").click()
    assert unlabelled_controls(page) == []
    page.get_by_label("Name", exact=True).fill("scratch")
    page.get_by_label("Kind").select_option("local")
    page.get_by_role("button", name="Test and save").click()
    # the folder is required: the error sits next to it, nothing was saved
    err = page.locator('.kind-fields[data-kind="local"] .field[data-name="path"] .field-error')
    err.wait_for()
    assert err.inner_text()
    page.locator("#storage-local-path").fill(str(tmp_path / "scratch"))
    with page.expect_response(
        lambda r: r.request.method == "POST" and r.url.endswith("/connections")
    ) as saved:
        page.get_by_role("button", name="Test and save").click()
    assert saved.value.status == 201, saved.value.text()
    page.wait_for_load_state()  # the page reloads with the new connection
    page.locator("table tr", has_text="scratch").wait_for()
    s.shot("5-storage-connection-added")
    # the compute page offers Slurm and Ray, with their settings
    page.goto("/compute")
    page.get_by_text("Add a compute connection").click()
    page.get_by_label("Kind").select_option("slurm")
    assert page.locator("#compute-slurm-partition").is_visible()
    assert not page.locator("#compute-ray-address").is_visible()
    s.shot("5-compute-add-form")
    s.close()


def test_jobs_list_filters_and_pages(server: ForgehubServer) -> None:
    admin = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.url, headers=admin) as c:
        ids = []
        for _ in range(27):  # queued on a worker pool nobody serves, then cancelled
            j = c.post(
                "/api/v1/jobs", json={"kind": "command", "command": ["true"], "compute": "workers"}
            ).json()
            c.post(f"/api/v1/jobs/{j['id']}/cancel")
            ids.append(j["id"])
    with httpx.Client(base_url=server.url) as b:
        sign_in(b, server.admin_token)
        page1 = b.get("/jobs", params={"state": "cancelled", "compute": "workers"}).text
        assert "27 jobs" in page1 and "Page 1 of 2" in page1
        assert ids[-1][:12] in page1 and ids[0][:12] not in page1  # newest first
        page2 = b.get("/jobs", params={"state": "cancelled", "compute": "workers", "page": 2}).text
        assert ids[0][:12] in page2
        assert "0 jobs" in b.get("/jobs", params={"state": "running", "compute": "workers"}).text
        assert "0 jobs" in b.get("/jobs", params={"module": "digits", "state": "cancelled"}).text


def test_on_a_narrow_screen_the_modules_come_first(browser: Any, server: ForgehubServer) -> None:
    s = Session(browser, server, server.admin_token, viewport={"width": 390, "height": 800})
    page = s.page
    page.goto("/")
    assert page.locator("details.facets-box").evaluate("d => d.open") is False
    card = page.locator(".card").first.bounding_box()
    assert card is not None and card["y"] < 800  # above the fold
    page.get_by_text("Filters").click()  # the filters are one tap away
    assert page.locator("details.facets-box").evaluate("d => d.open") is True
    s.close()
