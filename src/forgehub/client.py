"""The one HTTP client of forgehub's own API. The CLI, the worker, the job runner and the blob
storage adapter share it:

* **typed errors**: a 4xx/5xx answer (problem+json) comes back as the same
  :class:`~forgehub.errors.ForgehubError` the server raised — :class:`~forgehub.errors.NotFound`,
  :class:`~forgehub.errors.Forbidden`, … — with its ``status``, ``detail`` and field ``errors``;
  a server that cannot be reached is :class:`Unreachable`;
* **one retry policy**, :class:`~forgehub.patience.Patience` (shared with the CLI's plain
  calls): how long to keep trying through transport failures and 502/503/504 (a restarting
  server, a proxy in front of it); off unless asked for, since only the caller knows whether a
  request may be sent twice;
* **one connection pool** per client (a worker shares one among all its jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from forgehub.errors import ForgehubError, Unreachable, from_answer
from forgehub.patience import ONCE, Patience, patiently

__all__ = ["ONCE", "ApiClient", "Patience", "Unreachable", "error_for"]


def error_for(r: httpx.Response) -> ForgehubError:
    """The typed error of a 4xx/5xx answer."""
    return from_answer(r.status_code, r.text)


def _no_tls() -> Any:
    """For a server reached over plain HTTP: a TLS context that trusts no certificate at all,
    so any TLS connection through this client fails, instead of loading the system's CA
    bundle (~30 ms of every command's start) for connections that never use it."""
    import ssl

    return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies peers, and knows none


class ApiClient:
    """A client of one forgehub server, authenticated with one token."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: httpx.Timeout | float = httpx.Timeout(60.0, connect=5.0),
        http: httpx.Client | None = None,
        patience: Patience = ONCE,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.patience = patience
        self.own_http = http is None
        # its own pool knows the server and the token (for streams through ``http``); a
        # shared pool serves several tokens, which go with each request
        self.http = http or httpx.Client(
            base_url=self.base_url,
            headers=self.headers,
            timeout=timeout,
            verify=_no_tls() if self.base_url.startswith("http://") else True,
        )

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else self.base_url + path

    def send(
        self,
        method: str,
        path: str,
        *,
        patience: Patience | None = None,
        stop: Callable[[], bool] | None = None,
        on_retry: Callable[[str, float], None] | None = None,
        **kw: Any,
    ) -> httpx.Response:
        """One request; a 4xx/5xx answer raises its typed error. With ``patience``, transport
        failures and 502/503/504 are retried (``stop()`` ends the waiting early, ``on_retry``
        hears why and how long it waits)."""
        headers = {**self.headers, **(kw.pop("headers", None) or {})}

        def attempt() -> httpx.Response:
            try:
                r = self.http.request(method, self.url(path), headers=headers, **kw)
            except httpx.TransportError as exc:
                raise Unreachable(f"cannot reach {self.base_url}: {exc}") from None
            if r.status_code >= 400:
                raise error_for(r)
            return r

        return patiently(attempt, patience or self.patience, stop, on_retry)

    def call(self, method: str, path: str, **kw: Any) -> Any:
        """:meth:`send`, and the JSON body of the answer (None when it has none)."""
        r = self.send(method, path, **kw)
        if r.status_code == 204 or not r.content:
            return None
        return r.json()

    def close(self) -> None:
        if self.own_http:
            self.http.close()
