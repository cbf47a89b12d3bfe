"""HTTP header values built from user data, so that no user value can break a header."""

from __future__ import annotations

import re
from urllib.parse import quote

_PLAIN = re.compile(r"[^A-Za-z0-9 ._()+,=-]")


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """``attachment; filename="…"; filename*=UTF-8''…`` (RFC 6266): the plain name has every
    quote, backslash, control or non-ASCII character replaced; the full name is percent-encoded."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1] or "download"
    plain = _PLAIN.sub("_", name)[:200] or "download"
    return f"{disposition}; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
