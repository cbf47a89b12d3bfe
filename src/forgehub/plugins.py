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
    # the installed packages do not change while a process runs: scanning them (every installed
    # distribution's metadata, ~10 ms) happens once, and a class is imported once
    _kinds: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _loaded: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def kinds(self) -> dict[str, str]:
        if not self._kinds:
            found = dict(self.builtin)
            for ep in entry_points(group=self.group):
                if ep.name in found and found[ep.name] != ep.value:
                    continue
                found[ep.name] = ep.value
            self._kinds.update(found)
        return dict(self._kinds)

    def load(self, kind: str) -> Any:
        cls = self._loaded.get(kind)
        if cls is None:
            cls = self._loaded[kind] = self._import(kind)
        return cls

    def _import(self, kind: str) -> Any:
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
