"""Module environments: one virtual environment per resolved lock, built with ``uv``, cached per
machine and shared by every job that needs the same lock.

A *lock* is the Python version, the exact requirements of the module's dependencies, and the
module itself (its exact source: a commit, a wheel digest, an ``==`` pin). Its SHA-256 names the
environment: ``<cache>/envs/<digest>``. The first job that needs it builds it under a file lock
(others wait, then share it); a build that fails leaves nothing behind.

Module code runs in that environment, never beside forgehub's own libraries: the job child and
the model API's module host are started with its interpreter, and find the few forgehub files
they need (the module contract, discovery, the child) in the *host overlay*, a copy of those
files that import nothing outside the standard library (``<cache>/envs/host-<digest>``).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from forgehub.envs.sources import Source, SourceError, git_env

READY = ".forgehub-lock.json"  # written last: an environment without it is not finished
Log = Callable[[str], None]
# the forgehub files a module's environment sees (standard library only, plus what the module
# itself brings: pydantic for a native module, marshmallow for a DEEPaaS one)
HOST_FILES = (
    "__init__.py",
    "module/__init__.py",
    "module/args.py",
    "module/contract.py",
    "module/deepaas.py",
    "module/discovery.py",
    "module/loaded.py",
    "module/native.py",
    "module/host.py",
    "jobs/__init__.py",
    "jobs/child.py",
)


class EnvironmentFailed(RuntimeError):
    """An environment that could not be resolved or built; the message says why."""


def uv_bin() -> str:
    from uv import find_uv_bin

    return str(find_uv_bin())


def python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def digest(lock: dict[str, Any]) -> str:
    canonical = json.dumps(lock, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _uv(args: list[str], log: Log, stdin: str | None = None) -> str:
    """Run ``uv`` (no shell), its progress lines to ``log``; its stdout back."""
    env = {**git_env(), "UV_NO_PROGRESS": "1", "NO_COLOR": "1"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        [uv_bin(), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stderr.splitlines():
        if line.strip():
            log(f"uv: {line.rstrip()}")
    if proc.returncode != 0:
        last = [ln for ln in proc.stderr.splitlines() if ln.strip()][-3:]
        raise EnvironmentFailed(f"uv {args[0]} {args[1]} failed: {' '.join(last)[:500]}")
    return proc.stdout


def requirement(src: Source, local: Path | None = None) -> str:
    """What uv installs for ``src``: a git checkout's folder or a wheel's file stands for its
    commit or digest."""
    if src.kind == "pip":
        return src.value
    if local is None:
        raise EnvironmentFailed(f"{src} needs its local copy (a checkout, the archive)")
    return str(local)


def checkout(src: Source, dest: Path, log: Log) -> Path:
    """A git source's commit, cloned into ``dest`` with git itself (only the allowed transports;
    no hooks or submodules run) and checked out detached."""
    if src.kind != "git" or not src.commit:
        raise EnvironmentFailed(f"{src} is not a git source resolved to a commit")
    t0 = time.monotonic()
    dest.parent.mkdir(parents=True, exist_ok=True)
    for args in (
        ["clone", "--quiet", "--no-checkout", "--", src.value, str(dest)],
        ["-C", str(dest), "checkout", "--quiet", "--detach", src.commit],
    ):
        proc = subprocess.run(
            ["git", "-c", "core.hooksPath=/dev/null", *args],
            capture_output=True,
            text=True,
            env=git_env(),
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            why = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
            raise EnvironmentFailed(f"cannot check out {src}: {why[:300]}")
    log(f"checked out {src.value} at {src.commit[:12]} in {time.monotonic() - t0:.1f} s")
    return dest


def lock(src: Source, log: Log, local: Path | None = None) -> dict[str, Any]:
    """Resolve ``src`` with ``uv pip compile``: the module's name and exact source, and the exact
    versions of everything it needs, for this machine's Python."""
    if not src.exact and src.kind != "pip":  # a requirement's range is pinned by the lock
        raise EnvironmentFailed(f"{src} is not exact (resolve it to a commit or a digest first)")
    t0 = time.monotonic()
    out = _uv(
        [
            "pip",
            "compile",
            "-",
            "--no-header",
            "--no-annotate",
            "--quiet",
            "--python-version",
            python_version(),
        ],
        log,
        stdin=requirement(src, local) + "\n",
    )
    own = requirement(src, local)
    packages = []
    for line in out.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", "-")):
            continue
        if src.kind != "pip" and line == own:
            continue  # the module itself is recorded by its exact source, not its local copy
        if " @ " in line and line.split(" @ ", 1)[1].strip() in (own, Path(own).as_uri()):
            continue
        packages.append(line)
    name = _dist_name(src, local)
    log(f"resolved {src}: {len(packages)} package(s) in {time.monotonic() - t0:.1f} s")
    return {
        "python": python_version(),
        "module": {"name": name, "source": str(src)},
        "packages": sorted(packages, key=str.lower),
    }


def _dist_name(src: Source, local: Path | None) -> str:
    """The module's distribution name: its pyproject's, its archive's, else the source's."""
    if local is not None and local.is_dir() and (local / "pyproject.toml").is_file():
        import tomllib

        try:
            name = tomllib.loads((local / "pyproject.toml").read_text())["project"]["name"]
            if isinstance(name, str) and name:
                return name
        except (KeyError, TypeError, ValueError):
            pass
    if local is not None and local.is_file():
        return local.name.split("-", 1)[0]
    return src.default_name


LOCK_REUSE_S = 24 * 3600  # how long a machine reuses its resolution of one exact source


def _lock_file(src: Source, root: Path) -> Path:
    """Where this machine keeps its resolution of ``src``: by the source, the Python and the
    index settings uv resolves against."""
    index = [os.environ.get(k, "") for k in ("UV_INDEX_URL", "UV_DEFAULT_INDEX", "UV_INDEX")]
    index += [os.environ.get(k, "") for k in ("UV_EXTRA_INDEX_URL", "UV_FIND_LINKS")]
    key = hashlib.sha256("\0".join([str(src), python_version(), *index]).encode())
    return root / "locks" / f"{key.hexdigest()}.json"


def cached_lock(src: Source, root: Path) -> dict[str, Any] | None:
    """The lock this machine resolved for ``src`` in the last day (exact sources only: the
    same code then runs in the same environment, with no checkout and no resolution)."""
    if not src.exact:
        return None
    path = _lock_file(src, root)
    try:
        if time.time() - path.stat().st_mtime > LOCK_REUSE_S:
            return None
        found: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found if found.get("module", {}).get("source") == str(src) else None


def remember_lock(src: Source, root: Path, lock_: dict[str, Any]) -> None:
    if not src.exact:
        return
    path = _lock_file(src, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(lock_))
    tmp.replace(path)


def is_built(lock_: dict[str, Any], root: Path) -> bool:
    return (root / digest(lock_) / READY).is_file()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(lock_: dict[str, Any], root: Path, log: Log, local: Path | None = None) -> Path:
    """The environment for ``lock_`` under ``root`` (``<cache>/envs``): found, or built now."""
    if lock_.get("python") != python_version():
        raise EnvironmentFailed(
            f"this environment is locked for Python {lock_.get('python')}; this machine runs "
            f"{python_version()}"
        )
    key = digest(lock_)
    env = root / key
    with _locked(root / f"{key}.lock"):
        if (env / READY).is_file():
            log(f"environment {key[:12]} is cached on this machine")
            return env
        t0 = time.monotonic()
        shutil.rmtree(env, ignore_errors=True)  # a build that died half-way
        log(f"building environment {key[:12]} ({len(lock_['packages'])} package(s))")
        try:
            _build(lock_, env, log, local)
        except BaseException:
            shutil.rmtree(env, ignore_errors=True)
            raise
        (env / READY).write_text(json.dumps(lock_, indent=1))
        log(f"environment {key[:12]} built in {time.monotonic() - t0:.1f} s")
    return env


def prepare(
    src: Source,
    root: Path,
    log: Log,
    fetch: Callable[[], Path | None],
    pinned: dict[str, Any] | None = None,
    on_lock: Callable[[dict[str, Any]], None] | None = None,
) -> Path:
    """The environment ``src`` runs in on this machine: in the ``pinned`` lock (a version's),
    else the one resolved here before (:func:`cached_lock`), else resolved now. ``fetch``
    brings the code (a checkout, the archive) only when it must be resolved or built; ``on_lock``
    hears the lock before the build starts (so a failed build still reports it)."""
    lock_ = pinned or cached_lock(src, root)
    if lock_ is not None and pinned is None:
        log(f"environment of {src}: as resolved on this machine before")
    local = fetch() if lock_ is None or not is_built(lock_, root) else None
    if lock_ is None:
        lock_ = lock(src, log, local)
        remember_lock(src, root, lock_)
    if on_lock is not None:
        on_lock(lock_)
    return ensure(lock_, root, log, local)


def _build(lock_: dict[str, Any], env: Path, log: Log, local: Path | None) -> None:
    from forgehub.envs.sources import parse

    _uv(["venv", "--quiet", "--python", sys.executable, str(env)], log)
    python = str(env / "bin" / "python")
    if lock_["packages"]:
        _uv(
            ["pip", "sync", "--python", python, "-"],
            log,
            stdin="\n".join(lock_["packages"]) + "\n",
        )
    src = parse(lock_["module"]["source"])
    if src is None:
        raise EnvironmentFailed(f"lock names no module source: {lock_['module']}")
    if src.kind != "pip":  # a pip module is one of the locked packages already
        _uv(["pip", "install", "--no-deps", "--python", python, requirement(src, local)], log)


def host_overlay(root: Path) -> Path:
    """The folder to put on a module environment's ``PYTHONPATH``: forgehub's standard-library
    files (module contract, discovery, the job child, the module host), copied once per
    forgehub version."""
    import forgehub

    pkg = Path(forgehub.__file__).parent
    h = hashlib.sha256()
    for rel in HOST_FILES:
        h.update(rel.encode() + b"\0" + (pkg / rel).read_bytes())
    out = root / f"host-{h.hexdigest()[:16]}"
    if (out / "forgehub" / "__init__.py").is_file():
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".host-{os.getpid()}-{time.monotonic_ns()}"
    for rel in HOST_FILES:
        dest = tmp / "forgehub" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(pkg / rel, dest)
    try:
        tmp.rename(out)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def interpreter(env: Path) -> str:
    return str(env / "bin" / "python")


def module_env(env: Path, overlay: Path, base: dict[str, str]) -> dict[str, str]:
    """The process environment of module code in ``env``: its interpreter first, the overlay on
    the import path, nothing of the runner's own environment's packages."""
    out = {k: v for k, v in base.items() if k not in ("PYTHONHOME", "VIRTUAL_ENV")}
    out["PYTHONPATH"] = str(overlay)
    out["PYTHONNOUSERSITE"] = "1"
    out["VIRTUAL_ENV"] = str(env)
    out["PATH"] = os.pathsep.join([str(env / "bin"), base.get("PATH", "/usr/bin:/bin")])
    return out


__all__ = [
    "EnvironmentFailed",
    "SourceError",
    "digest",
    "ensure",
    "host_overlay",
    "interpreter",
    "lock",
    "module_env",
]
