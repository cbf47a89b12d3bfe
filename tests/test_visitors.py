"""Visitors who are not signed in (#18): they browse and search the marketplace in Chromium
and cannot try a module until signed in; where the admin allows it they may try, rate-limited
per address; the admin may close the marketplace; the admin token's location is not shown."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from forgehub.config import Settings
from forgehub.server import create_app
from tests.modelapi_helpers import digit_png
from tests.services import ForgehubServer, started
from tests.test_dashboard import browser  # noqa: F401 - the fixture

PREDICT = "/api/v1/model-api/v2/models/digits/predict/"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForgehubServer]:
    srv = ForgehubServer(
        tmp_path_factory.mktemp("visitors") / "data",
        FORGEHUB_ANONYMOUS_TRY="true",
        FORGEHUB_ANONYMOUS_TRY_PER_MINUTE="4",
    )
    with started(srv):
        yield srv


def test_a_visitor_browses_and_searches_the_marketplace_and_must_sign_in_to_try(
    tmp_path: Any,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    srv = ForgehubServer(tmp_path / "data")  # the defaults: public, no anonymous try
    with started(srv):
        ctx = browser.new_context(base_url=srv.url)
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto("/")
        assert page.url.rstrip("/") == srv.url  # the marketplace, not the sign-in form
        assert page.get_by_role("link", name="Sign in").is_visible()
        page.get_by_label("Search").fill("digits")
        page.keyboard.press("Enter")
        page.wait_for_url("**/?q=digits*")
        page.get_by_role("link", name="Digits").first.click()
        page.wait_for_url("**/modules/digits")
        assert page.get_by_role("link", name="Sign in to try digits").is_visible()
        assert page.get_by_role("link", name="Deploy digits").count() == 0
        assert page.locator("#predict").count() == 0
        # nothing beyond the marketplace
        page.goto("/jobs")
        assert "/login" in page.url
        assert str(srv.data_dir) not in page.content()  # where the admin's token lies
        # signing in from the module page comes back to it, where trying works
        page.goto("/modules/digits")
        page.get_by_role("link", name="Sign in to try digits").click()
        page.get_by_label("API token").fill(srv.admin_token)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/modules/digits")
        assert page.locator("#predict").count() == 1
        ctx.close()
        assert errors == []
        image, _ = digit_png(3)
        r = httpx.post(srv.url + PREDICT, files={"image": ("d.png", image, "image/png")})
        assert r.status_code == 401 and "sign in" in r.json()["detail"]


def test_where_the_admin_allows_it_a_visitor_tries_a_module_rate_limited(
    server: ForgehubServer,
    browser: Any,  # noqa: F811 - the fixture imported above
) -> None:
    ctx = browser.new_context(base_url=server.url)
    page = ctx.new_page()
    page.goto("/modules/digits")
    image, label = digit_png(5)
    page.get_by_label("image").set_input_files(
        files=[{"name": "d.png", "mimeType": "image/png", "buffer": image}]
    )
    page.get_by_role("button", name="Predict").click()
    page.locator("#result").get_by_text(str(label)).first.wait_for(timeout=30_000)
    ctx.close()

    # the same address: the rest of this minute's allowance, then 429 with a wait
    codes = []
    for _ in range(5):
        r = httpx.post(server.url + PREDICT, files={"image": ("d.png", image, "image/png")})
        codes.append(r.status_code)
    assert codes[:3] == [200, 200, 200] and codes[-1] == 429, codes
    assert int(r.headers["Retry-After"]) >= 1 and "sign in" in r.json()["detail"]
    # a wrong token is refused as such, never taken for a visitor
    r = httpx.post(
        server.url + PREDICT,
        files={"image": ("d.png", image, "image/png")},
        headers={"Authorization": "Bearer fh_not-a-token"},
    )
    assert r.status_code == 401
    # a signed-in user is not counted against it
    r = httpx.post(
        server.url + PREDICT,
        files={"image": ("d.png", image, "image/png")},
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    assert r.status_code == 200


def test_the_admin_may_close_the_marketplace(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path / "data", public_marketplace=False)
    with TestClient(create_app(settings)) as c:
        r = c.get("/", follow_redirects=False)
        assert r.status_code in (302, 303) and "/login" in r.headers["location"]
        assert c.get("/modules/digits", follow_redirects=False).status_code in (302, 303)
        assert c.get("/api/v1/catalog/modules").status_code == 401  # the API's reads too
        token = settings.admin_token_file.read_text().strip()
        r = c.get("/api/v1/catalog/modules", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200
