"""Adapter kinds by name, for each adapter family (storage, compute).

Built-ins register like plugins: a kind maps to ``module:attr``, third parties add theirs through
the family's entry-point group, and a class is imported only when first used. A plugin never
silently replaces a built-in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any


@dataclass(frozen=True)
class Registry:
    label: str  # "storage", "compute": used in messages
    group: str  # the entry-point group
    builtin: dict[str, str]  # kind -> "module:attr"
    error: Callable[[str], Exception]  # what an unknown or unloadable kind raises
    hints: dict[str, str] = field(default_factory=dict)  # kind -> how to install what it needs

    def kinds(self) -> dict[str, str]:
        found = dict(self.builtin)
        for ep in entry_points(group=self.group):
            if ep.name in found and found[ep.name] != ep.value:
                continue
            found[ep.name] = ep.value
        return found

    def load(self, kind: str) -> Any:
        known = self.kinds()
        target = known.get(kind)
        if target is None:
            raise self.error(
                f"unknown {self.label} kind {kind!r} (known: {', '.join(sorted(known))})"
            )
        mod, _, attr = target.partition(":")
        try:
            return getattr(importlib.import_module(mod), attr)
        except ImportError as exc:
            hint = self.hints.get(kind)
            raise self.error(
                f"{self.label} kind {kind!r} needs more packages"
                + (f": {hint}" if hint else f": {exc}")
            ) from exc
