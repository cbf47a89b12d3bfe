"""CLI client: ``--server``/``FORGEHUB_URL``, ``--token``/``FORGEHUB_TOKEN``.

Where the server is, first found wins: ``--server`` or ``FORGEHUB_URL``; the login; the URL a
``forgehub serve`` on this machine wrote into its data directory; ``http://127.0.0.1:8000``.

Where the token comes from, first found wins: ``--token`` or ``FORGEHUB_TOKEN``; the file that
``forgehub login`` wrote (``~/.config/forgehub/login.json``, mode 0600, which also names the
server); the local admin token file, when the server's data directory is on this machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from forgehub.cli.messages import fail
from forgehub.errors import ForgehubError, Unreachable, from_answer

if TYPE_CHECKING:
    from forgehub.client import ApiClient
    from forgehub.config import Settings

DEFAULT_URL = "http://127.0.0.1:8000"


def local_settings() -> Settings | None:
    """This machine's configuration (``FORGEHUB_DATA_DIR``, the config file, …), if valid."""
    from forgehub.config import ConfigError, load_settings  # pydantic: only when needed

    try:
        return load_settings()
    except ConfigError:
        return None


def local_server(settings: Settings | None = None) -> str | None:
    """The URL a ``forgehub serve`` on this machine wrote into its data directory."""
    settings = settings or local_settings()
    if settings is None:
        return None
    try:
        data = json.loads(settings.server_file.read_text())
    except (OSError, ValueError):
        return None
    url = data.get("url") if isinstance(data, dict) else None
    return str(url) if url else None


def login_file() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "forgehub" / "login.json"


def saved_login() -> dict[str, Any]:
    """What ``forgehub login`` saved: ``{"server": …, "token": …}`` and, after a sign-in with
    a provider, its refresh token and where to use it (empty if nothing)."""
    try:
        data = json.loads(login_file().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return {}
    return {**data, "server": str(data.get("server") or "")}


def save_login(server: str, token: str, **extra: Any) -> Path:
    """Save the login (mode 0600 from the start); ``extra``: a provider's refresh details."""
    from forgehub.auth import write_secret_file

    path = login_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_file(path, json.dumps({**extra, "server": server, "token": token}))
    return path


def _login_token(login: dict[str, Any]) -> str | None:
    """The saved token; a provider's access token is refreshed when it is about to expire."""
    if login.get("refresh_token"):
        import time

        from forgehub.cli.oidc import REFRESH_AHEAD_S

        if float(login.get("expires_at") or 0) - time.time() < REFRESH_AHEAD_S:
            from forgehub.cli.oidc import fresh

            renewed = fresh(login)
            if renewed is not None:
                save_login(**renewed)
                return str(renewed["token"])
    token = login.get("token")
    return str(token) if token else None


def read_token_file(path: Path) -> str:
    try:
        value = path.read_text().strip()
    except OSError as exc:
        fail(f"cannot read the token file {path}: {exc.strerror}")
    if not value:
        fail(f"the token file {path} is empty")
    return value


class Client:
    def __init__(self, server: str | None, token: str | None) -> None:
        login = saved_login()
        local = None if (server or os.environ.get("FORGEHUB_URL")) else local_settings()
        self.server = (
            server
            or os.environ.get("FORGEHUB_URL")
            or login.get("server")
            or local_server(local)
            or DEFAULT_URL
        ).rstrip("/")
        self.token = (
            token
            or os.environ.get("FORGEHUB_TOKEN")
            or (_login_token(login) if login.get("server", "").rstrip("/") == self.server else None)
            or self._local_token(local)
        )
        self._api: ApiClient | None = None

    @property
    def api(self) -> ApiClient:
        """The full client (httpx), for streams, uploads and custom calls; made when needed."""
        if self._api is None:
            httpx_module()  # first: without httpx's own CLI
            from forgehub.client import ApiClient

            self._api = ApiClient(self.server, self.token, timeout=60.0)
        return self._api

    @property
    def http(self) -> Any:
        """httpx, for streams: knows the server and the token."""
        return self.api.http

    @staticmethod
    def _local_token(settings: Settings | None) -> str | None:
        """The local admin token, when the server's data directory is on this machine."""
        settings = settings or local_settings()
        if settings is None:
            return None
        try:
            return settings.admin_token_file.read_text().strip() or None
        except OSError:
            return None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        """Call the API; any error ends the command with its message (:func:`exit_for`).
        A plain JSON call goes through the standard library's ``http.client``: most commands
        are one such call, and this way they never load httpx (a third of their start)."""
        try:
            if set(kw) <= {"json", "params"}:
                return self._plain(method, path, kw.get("json"), kw.get("params"))
            return self.api.call(method, path, **kw)
        except ForgehubError as exc:
            exit_for(exc, self.server)

    def ask(self, method: str, path: str, body: Any = None, params: Any = None) -> Any:
        """A plain JSON call whose errors the caller handles (typed: NotFound, Conflict, …)."""
        return self._plain(method, path, body, params)

    def submit_job(self, body: dict[str, Any]) -> Any:
        """``POST /api/v1/jobs``, sent again when the answer is lost (a server of several died
        with the request, the balancer answered 502): its ``Idempotency-Key`` makes the server
        return the job the first try made rather than make a second."""
        import uuid

        from forgehub.patience import Patience, patiently

        key = {"Idempotency-Key": uuid.uuid4().hex}
        # a lost answer may take a while to show (a dying server holds the connection)
        resend = Patience(seconds=20.0, first_delay=0.5, max_delay=4.0)
        try:
            return patiently(lambda: self._plain("POST", "/api/v1/jobs", body, None, key), resend)
        except ForgehubError as exc:
            exit_for(exc, self.server)

    def _plain(
        self,
        method: str,
        path: str,
        body: Any,
        params: Any,
        extra_headers: dict[str, str] | None = None,
    ) -> Any:
        import http.client

        conn, r = self._send(method, path, body, params, extra_headers)
        try:
            raw = r.read()
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach {self.server}: {exc}") from None
        finally:
            conn.close()
        if r.status == 204 or not raw:
            return None
        return json.loads(raw)

    @contextmanager
    def download(self, path: str) -> Iterator[Any]:
        """``GET path`` as an ``http.client`` response, its body left to read (``readinto``
        into the caller's own buffers: no per-block layers or allocations); an error answer
        raises its typed error."""
        conn, r = self._send("GET", path, None, None, {"Accept": "*/*"}, timeout=300)
        try:
            yield r
        finally:
            conn.close()

    def _send(
        self,
        method: str,
        path: str,
        body: Any,
        params: Any,
        extra_headers: dict[str, str] | None = None,
        timeout: float | None = 60,
    ) -> tuple[Any, Any]:
        """The connection and the response (its body unread) of one request; an error answer
        raises its typed error, an unreachable server Unreachable."""
        import http.client
        from urllib.parse import urlencode, urlsplit

        url = urlsplit(self.server)
        if params:
            kept = {
                k: (str(v).lower() if isinstance(v, bool) else v)
                for k, v in dict(params).items()
                if v is not None
            }
            path += ("&" if "?" in path else "?") + urlencode(kept, doseq=True)
        headers = {"Accept": "application/json", "User-Agent": "forgehub-cli"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra_headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn: http.client.HTTPConnection
        if url.scheme == "https":
            conn = http.client.HTTPSConnection(url.netloc, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(url.netloc, timeout=timeout)
        try:
            conn.request(method, url.path.rstrip("/") + path, body=data, headers=headers)
            r = conn.getresponse()
            if r.status >= 400:
                raise from_answer(r.status, r.read().decode("utf-8", "replace"))
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise Unreachable(f"cannot reach {self.server}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return conn, r

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


def key_values(pairs: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as a mapping; a VALUE that parses as JSON is that value."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            fail(f"--set expects KEY=VALUE, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def unique_id(ids: list[str], prefix: str, what: str) -> str:
    """The one id among ``ids`` that starts with ``prefix`` (ids are typed short)."""
    if prefix in ids:
        return prefix
    hits = [i for i in ids if i.startswith(prefix)]
    if len(hits) != 1:
        fail(f"{'no' if not hits else 'more than one'} {what} matches {prefix!r}")
    return hits[0]


def exit_for(exc: ForgehubError, server: str) -> NoReturn:
    """The one place where API errors become the CLI's messages and exit codes (1)."""
    if isinstance(exc, Unreachable):
        fail(
            f"cannot reach the forgehub server at {server}; is `forgehub serve` running? "
            "(set --server or FORGEHUB_URL)"
        )
    fail(f"{exc.status}: {exc}")


ServerOpt = typer.Option(
    None,
    "--server",
    envvar="FORGEHUB_URL",
    help="forgehub server URL (default: the local server, else http://127.0.0.1:8000).",
)
TokenOpt = typer.Option(
    None,
    "--token",
    envvar="FORGEHUB_TOKEN",
    help="API token (default: forgehub login's, else the local admin token file).",
    show_default=False,
)


def httpx_module() -> Any:
    """httpx, loaded only by the commands that stream (without its own CLI: see cli.entry)."""
    from forgehub.fastimport import skip_httpx_cli

    skip_httpx_cli()
    import httpx

    return httpx
