"""Modules from a source, served by the platform's model API: each version in its own
environment, in a host process inside the sandbox (see :mod:`forgehub.module.host`).

The server never imports such a module. :class:`Hosting` finds what a request asks for (a
pre-trained version's code, lock and weights; else the catalogue version's code), builds the
environment once per lock, and keeps a few :class:`HostedModule` processes warm. Their code runs
on the server's machine because its owner may run code there (``own_code_users``), and always in
bubblewrap: no network, nothing of the data directory, only its own folder writable.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from forgehub.auth import Principal
from forgehub.catalog.weights import Trained, WeightsOnServer, code_of, pretrained
from forgehub.envs import environments as envs
from forgehub.envs import sources
from forgehub.errors import Forbidden, NotFound
from forgehub.module.args import ArgErrors, ArgSpec
from forgehub.module.contract import TrainContext
from forgehub.module.loaded import LoadedModule, ModuleError, Output, jsonable

log = logging.getLogger("forgehub.hosted")
KEEP = 4  # hosts kept running (the least recently used one stops)
HOST_MEMORY_MB = 4096


class HostedModule(LoadedModule):
    """A module in its own environment and process, behind the :class:`LoadedModule` face."""

    def __init__(
        self,
        name: str,
        env_dir: Path,
        overlay: Path,
        home: Path,
        weights: Path | None = None,
        memory_mb: int = HOST_MEMORY_MB,
        sandboxed: bool = True,
    ) -> None:
        """``sandboxed``: in bubblewrap (always on the server's machine); without, on the
        user's own machine (``forgehub module serve SOURCE``)."""
        from forgehub.jobs import sandbox
        from forgehub.jobs.runner import _pdeathsig_and_limits

        self.name = name
        self.target = f"hosted:{name}"
        self.home = home
        self.upload_dir = home  # uploads land where the sandboxed host can read them
        self._lock = threading.Lock()
        self._n = itertools.count()
        tool = sandbox.bwrap()
        if tool is None and sandboxed:
            raise ModuleError(
                "modules from a source run on the server only in a sandbox, and bubblewrap is "
                "not installed here (apt install bubblewrap)",
                503,
            )
        base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "TZ")}
        env = envs.module_env(env_dir, overlay, base)
        readable = [Path(sys.base_prefix), Path(sys.base_exec_prefix), env_dir, overlay]
        if weights is not None:
            readable.append(weights)
        argv = [envs.interpreter(env_dir), "-m", "forgehub.module.host"]
        if sandboxed and tool is not None:
            argv, env = sandbox.wrap(argv, home, readable, tool), sandbox.clean_env(env, home)
        self.proc = subprocess.Popen(
            argv,
            cwd=home,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            preexec_fn=_pdeathsig_and_limits(memory_mb),
        )
        threading.Thread(target=self._log, daemon=True).start()
        try:
            desc = self._call({"op": "open", "name": name, "weights": _str(weights)})
        except BaseException:
            self.close()
            raise
        self.kind = str(desc["kind"])
        self._meta = dict(desc.get("metadata") or {})
        self._predict = [ArgSpec(**s) for s in desc.get("predict_specs") or []]
        self._train = [ArgSpec(**s) for s in desc.get("train_specs") or []]
        self._trainable = bool(desc.get("trainable"))
        self._response = desc.get("response_schema")

    def _log(self) -> None:
        assert self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            log.info("%s: %s", self.name, raw.decode("utf-8", "replace").rstrip())

    def _call(self, req: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            assert self.proc.stdin is not None and self.proc.stdout is not None
            try:
                self.proc.stdin.write((json.dumps(req) + "\n").encode())
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = b""
        if not line:
            code = self.proc.poll()
            raise ModuleError(f"the module's process ended (exit code {code}); see the log", 500)
        answer: dict[str, Any] = json.loads(line)
        if answer.get("error") == "args":
            raise ArgErrors(answer.get("errors") or {}, answer.get("body"))
        if answer.get("error"):
            raise ModuleError(str(answer.get("message")), int(answer.get("status") or 500))
        return answer

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        try:
            os.killpg(self.proc.pid, 9)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait(timeout=10)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
        shutil.rmtree(self.home, ignore_errors=True)

    # -- LoadedModule --------------------------------------------------------------------
    def metadata(self) -> dict[str, Any]:
        return self._meta

    @property
    def predict_specs(self) -> list[ArgSpec]:
        return self._predict

    @property
    def train_specs(self) -> list[ArgSpec]:
        return self._train

    @property
    def trainable(self) -> bool:
        return self._trainable

    def response_schema(self) -> dict[str, Any] | None:
        return self._response

    def warm(self) -> None:
        """Warmed in its own process when it opened."""

    def validate_predict(self, data: dict[str, Any]) -> Any:
        return data  # the module validates in its own process, with its own libraries

    def validate_train(self, data: dict[str, Any]) -> Any:
        raise ModuleError(f"train {self.name} as a job (forgehub train {self.name})", 405)

    def train(self, args: Any, ctx: TrainContext) -> Any:
        raise ModuleError(f"train {self.name} as a job (forgehub train {self.name})", 405)

    def predict(self, args: Any) -> Output:
        files: dict[str, Any] = {}
        plain: dict[str, Any] = {}
        for key, value in dict(args).items():
            if _is_upload(value):
                files[key] = _file(value)
            elif isinstance(value, list) and value and all(_is_upload(v) for v in value):
                files[key] = [_file(v) for v in value]
            else:
                plain[key] = jsonable(value)
        out = self.home / f"answer-{next(self._n)}"
        answer = self._call({"op": "predict", "args": plain, "files": files, "out": str(out)})
        if answer["kind"] == "json":
            return Output("json", answer["body"])
        return Output(
            "file",
            out,
            answer.get("media_type") or "application/octet-stream",
            answer.get("filename"),
            delete=True,
        )


def _is_upload(value: Any) -> bool:
    return hasattr(value, "original_filename") and hasattr(value, "filename")


def _file(value: Any) -> dict[str, Any]:
    return {
        "path": str(value.filename),
        "content_type": value.content_type,
        "filename": value.original_filename,
    }


def _str(path: Path | None) -> str | None:
    return None if path is None else str(path)


@dataclass(frozen=True)
class Plan:
    """What a prediction of a module from a source needs: its code, lock and weights."""

    name: str
    source: str
    lock: dict[str, Any] | None
    trained: Trained | None

    @property
    def key(self) -> tuple[str, str, str]:
        lock = envs.digest(self.lock) if self.lock else ""
        return (self.source, lock, self.trained.digest if self.trained else "")


class Hosting:
    """The platform's hosted modules: found per request, built and started once, a few kept."""

    def __init__(self, db: Any, policy: Any, weights: WeightsOnServer, cache_root: Path) -> None:
        self.db = db
        self.policy = policy
        self.weights = weights
        self.root = cache_root
        self._hosts: OrderedDict[tuple[str, str, str], HostedModule] = OrderedDict()
        self._lock = threading.Lock()
        self._starting: dict[tuple[str, str, str], threading.Lock] = {}

    def plan(self, principal: Principal, name: str, version: str | None) -> Plan | None:
        """None: the catalogue has no code for ``name`` (the caller answers 404)."""
        from forgehub.db.models import CatalogModule, User

        with self.db.session() as s:
            trained = pretrained(s, principal, name, version)
            code = code_of(s, principal, name, version if trained is None else None)
            source = (trained.source if trained else None) or (code.source if code else None)
            if source is None:
                return None
            m = s.query(CatalogModule).filter_by(name=name).one()
            owner = s.get(User, m.owner_id) if m.owner_id else None
            who = Principal(owner.id, owner.name, owner.role) if owner else None
            if who is None or not self.policy.may_run_own_code(who):
                raise Forbidden(
                    f"{name} runs on the server only for owners an admin allows "
                    "(own_code_users); deploy it on your own compute instead"
                )
            lock = (trained.environment if trained else None) or (
                code.environment if code else None
            )
        return Plan(name, source, lock, trained)

    def module(self, plan: Plan) -> HostedModule:
        """The running host for ``plan``: found, or built and started now (blocking)."""
        key = plan.key
        with self._lock:
            host = self._hosts.get(key)
            if host is not None and host.alive:
                self._hosts.move_to_end(key)
                return host
            starting = self._starting.setdefault(key, threading.Lock())
        with starting:  # one start per plan; the others wait for it
            with self._lock:
                host = self._hosts.get(key)
                if host is not None and host.alive:
                    return host
            host = self._start(plan)
            with self._lock:
                old = self._hosts.pop(key, None)
                self._hosts[key] = host
                evicted = []
                while len(self._hosts) > KEEP:
                    evicted.append(self._hosts.popitem(last=False)[1])
        for h in [*evicted, *([old] if old is not None else [])]:
            h.close()
        return host

    def _start(self, plan: Plan) -> HostedModule:
        src = sources.parse(plan.source)
        if src is None:
            raise NotFound(f"{plan.name} has no code to run")
        home = Path(tempfile.mkdtemp(prefix="host-", dir=self._dir("hosts")))
        try:

            def say(message: str) -> None:
                log.info("%s: %s", plan.name, message)

            root = self._dir("envs")

            def fetch() -> Path | None:
                if src.kind == "wheel":
                    return self._archive(plan, src, home)
                return envs.checkout(src, home / "repo", say) if src.kind == "git" else None

            env_dir = envs.prepare(src, root, say, fetch, plan.lock)
            for leftover in (home / "repo", *home.glob("*.whl"), *home.glob("*.tar.gz")):
                # the sandboxed module sees its own folder: not its build's leftovers
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            weights = self.weights.fetch(plan.trained) if plan.trained else None
            return HostedModule(plan.name, env_dir, envs.host_overlay(root), home, weights)
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise

    def _archive(self, plan: Plan, src: sources.Source, home: Path) -> Path:
        """A wheel source's file, from the store it was pushed to, under its own name."""
        from forgehub.db.models import Artifact

        with self.db.session() as s:
            art = s.query(Artifact).filter_by(digest=src.value).first()
            if art is None:
                raise NotFound(f"the code of {plan.name} ({src}) is no longer stored anywhere")
            name = sources.archive_name(art.filename or "")
            item = Trained(plan.name, "source", art.digest, art.kind, art.id, art.filename)
        dest = home / name
        shutil.copyfile(self.weights.fetch(item), dest)
        return dest

    def _dir(self, name: str) -> Path:
        path = self.root / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        with self._lock:
            hosts = list(self._hosts.values())
            self._hosts.clear()
        for h in hosts:
            h.close()
