"""HTTP header values built from user data, so that no user value can break a header."""

from __future__ import annotations

import re
from urllib.parse import quote

_PLAIN = re.compile(r"[^A-Za-z0-9 ._()+,=-]")


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """``attachment; filename="…"`` (RFC 6266): the plain name has every quote, backslash,
    control or non-ASCII character replaced; where that changed it, ``filename*=UTF-8''…``
    follows with the full name percent-encoded (a plain name goes as it is, as aiohttp and so
    DEEPaaS write it)."""
    name = filename.replace("\\", "/").rsplit("/", 1)[-1] or "download"
    plain = _PLAIN.sub("_", name)[:200] or "download"
    if plain == name:
        return f'{disposition}; filename="{plain}"'
    return f"{disposition}; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"
