"""CLI client: ``--server``/``FORGEHUB_URL``, ``--token``/``FORGEHUB_TOKEN``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NoReturn

import httpx
import typer
from rich.console import Console

from forgehub.config import ConfigError, load_settings

err = Console(stderr=True)
DEFAULT_URL = "http://127.0.0.1:8000"


class Client:
    def __init__(self, server: str | None, token: str | None) -> None:
        self.server = (server or os.environ.get("FORGEHUB_URL") or DEFAULT_URL).rstrip("/")
        self.token = token or os.environ.get("FORGEHUB_TOKEN") or self._local_token()
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.server, headers=headers, timeout=60.0)

    @staticmethod
    def _local_token() -> str | None:
        """The local admin token, when the server's data directory is on this machine."""
        try:
            path: Path = load_settings().admin_token_file
        except ConfigError:
            return None
        try:
            return path.read_text().strip() or None
        except OSError:
            return None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.ConnectError:
            fail(
                f"cannot reach the forgehub server at {self.server}; is `forgehub serve` "
                "running? (set --server or FORGEHUB_URL)"
            )
        except httpx.HTTPError as exc:
            fail(f"request to {self.server} failed: {exc}")
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            fail(f"{r.status_code}: {detail}")
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.request("DELETE", path, **kw)


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


ServerOpt = typer.Option(
    None,
    "--server",
    envvar="FORGEHUB_URL",
    help="forgehub server URL [default: http://127.0.0.1:8000]",
)
TokenOpt = typer.Option(
    None,
    "--token",
    envvar="FORGEHUB_TOKEN",
    help="API token [default: the local admin token file]",
    show_default=False,
)
