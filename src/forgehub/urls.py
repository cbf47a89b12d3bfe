"""Small URL helpers shared by adapters and policies."""

from __future__ import annotations

from urllib.parse import urlsplit


def url_host(url: object) -> list[str]:
    """The host of a URL, as a list (empty when there is none or it does not parse)."""
    if not isinstance(url, str) or not url:
        return []
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return []
    return [host] if host else []
