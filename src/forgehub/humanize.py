"""Numbers as people read them (shared by the CLI and the dashboard)."""

from __future__ import annotations


def duration(seconds: int) -> str:
    """An age in its largest unit: 45 s, 12 min, 3 h, 2 d."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"
