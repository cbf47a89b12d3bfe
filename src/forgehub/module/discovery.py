"""Finding and loading modules: entry points (``forgehub.modules``, ``deepaas.v2.model``) or an
importable ``package.module[:attr]`` path."""

from __future__ import annotations

import importlib
import inspect
import logging
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any

from forgehub.module.contract import Module
from forgehub.module.loaded import LoadedModule

log = logging.getLogger("forgehub.module")
GROUPS = {"forgehub.modules": "native", "deepaas.v2.model": "deepaas"}


class ModuleNotFound(LookupError):
    """No module by that name or path; the message lists what is available."""


@dataclass(frozen=True)
class ModuleRef:
    name: str
    target: str  # package.module[:attr]
    group: str


def discover() -> dict[str, ModuleRef]:
    """Every installed module, by name (native modules win a name clash)."""
    found: dict[str, ModuleRef] = {}
    for group in ("deepaas.v2.model", "forgehub.modules"):
        for ep in entry_points(group=group):
            found[ep.name] = ModuleRef(ep.name, ep.value, group)
    return found


def import_target(target: str) -> Any:
    mod_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModuleNotFound(f"cannot import {mod_name!r}: {exc}") from exc
    for part in filter(None, attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModuleNotFound(f"{mod_name!r} has no attribute {attr!r}") from None
    return obj


def wrap(obj: Any, target: str, name: str | None = None) -> LoadedModule:
    """Wrap a native module (class or instance) or a DEEPaaS model (module, class, instance).
    Only a native module needs pydantic (a DEEPaaS module's environment may have none)."""
    if inspect.isclass(obj) and issubclass(obj, Module):
        from forgehub.module.native import NativeModule

        return NativeModule(obj(), target, name)
    if isinstance(obj, Module):
        from forgehub.module.native import NativeModule

        return NativeModule(obj, target, name)
    from forgehub.module.deepaas import DeepaasModule

    default = getattr(obj, "name", None) if not inspect.ismodule(obj) else None
    if not isinstance(default, str) or not default:
        default = target.replace(":", ".").rsplit(".", 1)[-1]
    return DeepaasModule(obj, target, name or default)


def load(name_or_target: str) -> LoadedModule:
    """Load an installed module by name, or any module by import path."""
    refs = discover()
    ref = refs.get(name_or_target)
    if ref is not None:
        return wrap(import_target(ref.target), ref.target, ref.name)
    if "." in name_or_target or ":" in name_or_target:
        return wrap(import_target(name_or_target), name_or_target)
    known = ", ".join(sorted(refs)) or "none installed"
    raise ModuleNotFound(f"no module named {name_or_target!r} (installed: {known})")


def load_all(extra: list[str] | None = None) -> list[LoadedModule]:
    """Every installed module plus ``extra``; a module that fails to load is logged, skipped."""
    modules: dict[str, LoadedModule] = {}
    for ref in discover().values():
        try:
            m = wrap(import_target(ref.target), ref.target, ref.name)
        except Exception as exc:  # noqa: BLE001 - one broken module must not stop the server
            log.error("cannot load module %s (%s): %s", ref.name, ref.target, exc)
            continue
        modules[m.name] = m
    for target in extra or []:
        m = load(target)
        modules[m.name] = m
    return list(modules.values())
