"""forgehub's own exception tree. Every error a person may see carries its HTTP status, and one
handler (``forgehub.server.errors``) renders it: problem+json for the API, the error page for the
dashboard. Code raises these; no router translates errors by hand.

::

    ForgehubError (400)
     ├── BadRequest (400)
     ├── Unauthorized (401)
     ├── Forbidden (403)       visible to the caller, but not theirs to change
     ├── NotFound (404)        absent, or not visible to the caller (never says which)
     ├── Conflict (409)
     ├── TooLarge (413)
     ├── Invalid (422)         with ``errors``: one entry per field
     ├── Upstream (502)        a storage or compute back end failed; its message is safe
     └── Unreachable (503)     a client could not reach the server
"""

from __future__ import annotations

from typing import Any, ClassVar


class ForgehubError(Exception):
    """An error whose message is safe to show; ``status`` is the HTTP status to answer."""

    status: int = 400
    default_status: ClassVar[int] = 400

    def __init__(self, message: str, status: int | None = None, errors: Any = None) -> None:
        super().__init__(message)
        self.status = status if status is not None else type(self).default_status
        self.errors = errors

    @property
    def detail(self) -> str:
        return str(self)


class BadRequest(ForgehubError):
    default_status = 400


class Unauthorized(ForgehubError):
    default_status = 401


class Forbidden(ForgehubError):
    default_status = 403


class NotFound(ForgehubError):
    default_status = 404


class Conflict(ForgehubError):
    default_status = 409


class TooLarge(ForgehubError):
    default_status = 413


class Invalid(ForgehubError):
    default_status = 422


class Upstream(ForgehubError):
    default_status = 502


class Unreachable(ForgehubError):
    """The server could not be reached (or stayed away longer than the caller's patience)."""

    default_status = 503


BY_STATUS: dict[int, type[ForgehubError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: Invalid,
}


def from_answer(status: int, text: str) -> ForgehubError:
    """The typed error of a 4xx/5xx answer: its problem+json ``detail`` (else its text) and
    field ``errors``, as the class the server raised."""
    import json

    message, errors = text, None
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict):
        errors = body.get("errors")
        if "detail" in body:
            message = str(body["detail"])
    cls = BY_STATUS.get(status, Upstream if status >= 500 else ForgehubError)
    return cls(message, status, errors)
