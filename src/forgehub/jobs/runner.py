"""The job runner (``forgehub job run``): the same program on every compute back end.

1. With its job token (scoped to one attempt, expiring), it tells the server it started and
   gets the spec, storage credentials included (kept in memory, never written to a file).
2. It brings the inputs in through the storage adapters, into the machine's content cache.
3. It runs the module (or command) in a child process with its own process group and resource
   limits; a cancel ends the whole tree.
4. stdout, stderr and metrics go to the server in batches, numbered so a batch re-sent after an
   outage is stored once. Through a server outage the runner buffers and keeps trying.
5. It uploads the output directory as an artifact and reports the result.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if "httpx" not in sys.modules:  # a runner process of its own: start it fast (see cli.entry)
    from forgehub.fastimport import skip_httpx_cli

    skip_httpx_cli()

import httpx

from forgehub.jobs import leftovers
from forgehub.jobs.child import SOURCE_INPUT
from forgehub.jobs.reporting import PATIENCE_S, Reporter, Revoked, RunnerAPI

if TYPE_CHECKING:  # imported when a job has inputs or outputs: a no-op job starts faster
    from forgehub.artifacts.cache import ContentCache

log = logging.getLogger("forgehub.runner")
T = TypeVar("T")
KILL_GRACE_S = 3.0


class Cancelled(Exception):
    pass


def storage_adapter(spec: dict[str, Any], api: RunnerAPI) -> Any:
    """The adapter for a storage spec; ``relay`` goes through the server with the job token,
    ``grants`` straight to the store with requests the server signs for it."""
    if spec["kind"] in ("relay", "grants"):
        from pydantic import SecretStr

        from forgehub.jobs.relay import GrantStorage, RelayStorage

        cfg = RelayStorage.Config(
            url=api.base,
            job_id=api.job_id,
            connection=spec["config"]["connection"],
            token=SecretStr(api.token),
        )
        return GrantStorage(cfg) if spec["kind"] == "grants" else RelayStorage(cfg)
    from forgehub.storage import make

    return make(spec["kind"], spec["config"])


def machine_cache() -> ContentCache:
    """This machine's content cache, shared by every job that runs here."""
    from forgehub.artifacts import cache

    return cache.machine_cache(cache_root())


def cache_root() -> Path:
    """The machine's job cache: ``FORGEHUB_CACHE_DIR``; else, on a server machine, under its
    data directory (two servers never share one); else ``~/.cache/forgehub`` (a worker)."""
    if os.environ.get("FORGEHUB_CACHE_DIR"):
        return Path(os.environ["FORGEHUB_CACHE_DIR"])
    if os.environ.get("FORGEHUB_DATA_DIR"):
        return Path(os.environ["FORGEHUB_DATA_DIR"]) / "cache"
    return Path.home() / ".cache" / "forgehub"


def _pdeathsig_and_limits(memory_mb: int) -> Any:
    def preexec() -> None:
        try:  # die with the runner, even if it is killed with SIGKILL (Linux)
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        if memory_mb:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    return preexec


class JobRun:
    """One attempt of one job on this machine."""

    def __init__(
        self,
        server: str,
        job_id: str,
        token: str,
        cache: ContentCache | None = None,
        http: httpx.Client | None = None,
        gpus: str | None = None,
        started: dict[str, Any] | None = None,
    ):
        self.api = RunnerAPI(server, job_id, token, http)
        self.started = started  # the spec, when whoever launched this runner started the job
        self.reporter = Reporter(self.api)
        self._cache = cache
        self.job_id = job_id
        self.proc: subprocess.Popen[bytes] | None = None
        self.environment: dict[str, Any] | None = None  # the module's lock, once resolved
        self.described: dict[str, Any] | None = None  # the module's arguments, as it said
        # the GPUs this job may use, as CUDA_VISIBLE_DEVICES ("": none); None: as it is here
        self.gpus = gpus

    @property
    def cache(self) -> ContentCache:
        if self._cache is None:
            self._cache = machine_cache()
        return self._cache

    def check(self, _n: int = 0) -> None:
        if self.reporter.cancel.is_set():
            raise Cancelled()

    def request_cancel(self) -> None:
        """SIGTERM from a back end (scancel, ray stop, the local adapter): stop like a cancel."""
        self.reporter.cancel.set()

    def run(self) -> int:
        spec = self.started
        try:
            if spec is None:
                spec = self.api.call(
                    "start", {"host": socket.gethostname(), "pid": os.getpid()}, patience_s=120
                )
        except (Revoked, ConnectionError) as exc:
            print(f"forgehub job run: cannot start job {self.job_id}: {exc}", file=sys.stderr)
            return 2
        self.reporter.give_up_s = spec.get("give_up_s")
        self.reporter.start()
        work = Path(tempfile.mkdtemp(prefix=f"job-{self.job_id[:12]}-", dir=self._work_root()))
        leftovers.claim(work)  # a worker that restarts after a kill -9 knows it is ours
        outcome: dict[str, Any]
        try:
            if spec.get("cancel"):
                raise Cancelled()
            outcome = self._attempt(spec, work)
        except Cancelled:
            self._kill()
            outcome = {"state": "cancelled"}
        except Exception as exc:  # noqa: BLE001 - reported as the job's error
            self._kill()
            log.debug("job failed", exc_info=True)
            from forgehub.storage import StorageError

            plain = isinstance(exc, RuntimeError | TimeoutError | StorageError)
            outcome = {
                "state": "failed",
                "error": str(exc) if plain else f"{type(exc).__name__}: {exc}",
            }
        finally:
            shutil.rmtree(work, ignore_errors=True)
        if self.environment is not None:
            outcome["environment"] = self.environment
        if self.described is not None:
            outcome["described"] = self.described
        if outcome["state"] == "failed":
            self.reporter.line("system", f"failed: {outcome['error']}")
        last = self.reporter.close(keep_last=bool(spec.get("finish_events")))
        if last is not None and (last["lines"] or last["metrics"] or last["progress"] is not None):
            outcome["events"] = last
        if self.reporter.revoked.is_set():
            self.api.close()
            return 3
        try:
            self.api.call("finish", outcome)
        except (Revoked, ConnectionError) as exc:
            print(f"forgehub job run: cannot report the result: {exc}", file=sys.stderr)
            return 3
        finally:
            self.api.close()
        return 0 if outcome["state"] == "succeeded" else 1

    def _work_root(self) -> Path:
        root = cache_root() / "work"
        root.mkdir(parents=True, exist_ok=True)
        return root

    def _attempt(self, spec: dict[str, Any], work: Path) -> dict[str, Any]:
        say = self.reporter.line
        inputs = {}
        for item in spec["inputs"]:
            self.check()
            say("system", f"fetching input {item['name']} ({item['digest'][:19]}…)")
            inputs[item["name"]] = self._materialise(item, work / "inputs" / item["name"])
        output_dir = work / "output"
        output_dir.mkdir()
        self.check()
        result = self._execute(spec, inputs, output_dir, work)
        self.check()
        outcome: dict[str, Any] = {"state": "succeeded", "result": result}
        files = [p for p in output_dir.rglob("*") if p.is_file()]
        if files:
            from forgehub.artifacts.content import push_path

            target = files[0] if len(files) == 1 else output_dir
            adapter = storage_adapter(spec["output_storage"], self.api)
            say("system", f"uploading {spec['output']} to {spec['output_storage']['name']}")
            # a store (or the server's relay) that goes away mid-upload is waited for: what was
            # stored is not sent again, and a finished command is never lost to an outage
            pushed = self.patiently(
                "upload", lambda: push_path(adapter, target, progress=self.check)
            )
            outcome["output"] = {
                "digest": pushed.digest,
                "kind": pushed.kind,
                "size": pushed.size,
                "filename": target.name,
            }
            say("system", f"output {spec['output']}: {pushed.digest} ({pushed.size} bytes)")
        return outcome

    def patiently(self, what: str, fn: Callable[[], T], patience_s: float = PATIENCE_S) -> T:
        """``fn()``, retried while its store is unreachable, for up to ``patience_s``."""
        from forgehub.storage import Unavailable

        deadline = time.monotonic() + patience_s
        delay = 0.5
        while True:
            try:
                return fn()
            except Unavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise
                self.reporter.line("system", f"{what} interrupted ({exc}); trying again")
                self.check()
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _materialise(self, item: dict[str, Any], dest: Path) -> Path:
        """An input as a local path: a cached file, or a directory of links into the cache."""
        from forgehub.artifacts.cache import materialise

        adapter = storage_adapter(item["storage"], self.api)
        return materialise(self.cache, adapter, item["digest"], item["kind"], dest, self.check)

    def _execute(
        self, spec: dict[str, Any], inputs: dict[str, Path], output_dir: Path, work: Path
    ) -> dict[str, Any]:
        res = spec["resources"]
        threads = str(max(1, int(res.get("cpu", 1))))
        env = {
            **os.environ,
            "FORGEHUB_JOB_ID": spec["id"],
            "FORGEHUB_OUTPUT_DIR": str(output_dir),
            "OMP_NUM_THREADS": threads,
            "OPENBLAS_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
        }
        env.pop("FORGEHUB_JOB_TOKEN", None)  # the module never sees the job's credentials
        if self.gpus is not None:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus
        for name, path in inputs.items():
            env[f"FORGEHUB_INPUT_{name.upper()}"] = str(path)
        python, readable = sys.executable, None
        built = self._environment(spec, inputs, work)
        inputs = {k: v for k, v in inputs.items() if k != SOURCE_INPUT}
        if spec["kind"] == "service":  # a deployment: up until it is stopped; forgehub's own
            from forgehub.deployments.serving import serve  # server, the module in its env

            return serve(self, spec, inputs, work, env, built)
        if built is not None:
            from forgehub.envs import environments as envs

            env_dir, overlay = built
            python, env = envs.interpreter(env_dir), envs.module_env(env_dir, overlay, env)
            readable = [Path(sys.base_prefix), Path(sys.base_exec_prefix), env_dir, overlay]
        read_fd, write_fd = os.pipe()
        if spec["kind"] == "command":
            argv = list(spec["command"])
            if argv[:1] == ["{python}"]:  # the runner's own Python (a pipeline function step)
                argv[0] = sys.executable
        else:
            child_spec = work / "child.json"
            child_spec.write_text(
                json.dumps(
                    {
                        "kind": spec["kind"],
                        "module": spec["module"],
                        "module_target": spec.get("module_target"),
                        "module_source": spec.get("module_source"),
                        "version": spec.get("version"),
                        "args": spec["args"],
                        "inputs": {k: str(v) for k, v in inputs.items()},
                        "output_dir": str(output_dir),
                    }
                )
            )
            argv = [python, "-m", "forgehub.jobs.child", str(child_spec)]
            env["FORGEHUB_EVENTS_FD"] = str(write_fd)
            try:
                argv, env = self._sandboxed(argv, env, work, inputs, spec, readable)
            except BaseException:
                os.close(read_fd)
                os.close(write_fd)
                raise
        self.reporter.line("system", f"starting {spec['kind']}: {' '.join(argv[:6])}")
        try:
            self.proc = subprocess.Popen(
                argv,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,
                pass_fds=(write_fd,),
                preexec_fn=_pdeathsig_and_limits(int(res.get("memory_mb", 0))),
            )
        except OSError as exc:
            raise RuntimeError(f"cannot start {argv[0]}: {exc}") from exc
        finally:
            os.close(write_fd)
        result: dict[str, Any] = {}
        readers = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, "stdout"), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, "stderr"), daemon=True),
            threading.Thread(target=self._events, args=(read_fd, result), daemon=True),
        ]
        for t in readers:
            t.start()
        deadline = time.monotonic() + float(res.get("time_limit_s", 3600))
        while self.proc.poll() is None:
            if self.reporter.cancel.is_set():
                raise Cancelled()
            if time.monotonic() > deadline:
                raise TimeoutError(f"time limit of {res.get('time_limit_s')} s exceeded")
            try:
                self.proc.wait(timeout=0.1)
            except subprocess.TimeoutExpired:
                pass
        # what the module started (a tensorboard, a data loader) ends with it; they would
        # otherwise hold the log pipes open
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        for t in readers:
            t.join(timeout=5)
        code = self.proc.returncode
        if code != 0:
            if code < 0 and self.reporter.cancel.is_set():
                raise Cancelled()
            what = f"signal {-code}" if code < 0 else f"exit code {code}"
            if code == -signal.SIGKILL and res.get("memory_mb"):
                what += " (out of memory?)"
            raise RuntimeError(f"the {spec['kind']} process ended with {what}")
        return result.get("result", {"exit_code": code})

    def _environment(
        self, spec: dict[str, Any], inputs: dict[str, Path], work: Path
    ) -> tuple[Path, Path] | None:
        """A module with a source runs in its own environment (see :mod:`forgehub.envs`): the
        lock the job names (a reproduction) or one resolved now, built once per machine."""
        text = spec.get("module_source")
        if not text or spec["kind"] == "command":
            return None
        from forgehub.envs import environments as envs
        from forgehub.envs import sources

        def say(message: str) -> None:
            self.reporter.line("system", message)

        src = sources.parse(text)
        if src is None:
            raise RuntimeError(f"not a module source: {text!r}")
        root = cache_root() / "envs"

        def heard(lock: dict[str, Any]) -> None:
            self.environment = {"digest": envs.digest(lock), "lock": lock}
            self.check()

        env_dir = envs.prepare(
            src,
            root,
            say,
            lambda: self._fetch_source(spec, src, inputs, work, say),
            spec.get("environment"),
            heard,
        )
        return env_dir, envs.host_overlay(root)

    @staticmethod
    def _fetch_source(
        spec: dict[str, Any], src: Any, inputs: dict[str, Path], work: Path, say: Any
    ) -> Path | None:
        """The module's code on this machine: a git checkout, or its archive under its name."""
        from forgehub.envs import environments as envs
        from forgehub.envs import sources

        if src.kind == "git":
            return envs.checkout(src, work / "source" / "repo", say)
        if src.kind != "wheel":
            return None
        item = next((i for i in spec["inputs"] if i["name"] == SOURCE_INPUT), None)
        if item is None or SOURCE_INPUT not in inputs:
            raise RuntimeError("the module's archive was not among the job's inputs")
        local = work / "source" / sources.archive_name(item.get("filename") or "")
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(inputs[SOURCE_INPUT], local)
        return local

    def _sandboxed(
        self,
        argv: list[str],
        env: dict[str, str],
        work: Path,
        inputs: dict[str, Path],
        spec: dict[str, Any],
        readable: list[Path] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The module's command inside the sandbox where this runner must use one (see
        :mod:`forgehub.jobs.sandbox`), with a clean environment; as it is otherwise. A user's
        own code on the server's machine is always sandboxed (the server asks with
        ``sandbox: on``); ``readable`` is the module's environment where it has its own."""
        from forgehub.jobs import sandbox

        how = "on" if spec.get("sandbox") == "on" else sandbox.mode()
        if how == "off":
            return argv, env
        tool = sandbox.bwrap()
        if tool is None:
            if how == "on":
                raise sandbox.SandboxMissing(
                    "this machine runs module code in a sandbox, but bubblewrap is not "
                    "installed (apt install bubblewrap)"
                )
            self.reporter.line(
                "system", "no sandbox: bubblewrap is not installed (apt install bubblewrap)"
            )
            return argv, env
        readable = [*(readable or sandbox.python_paths()), *inputs.values()]
        self.reporter.line("system", "in a sandbox: no network, only its work directory writable")
        gpus = bool(env.get("CUDA_VISIBLE_DEVICES"))
        return sandbox.wrap(argv, work, readable, tool, gpus), sandbox.clean_env(env, work)

    def _pump(self, stream: Any, name: str) -> None:
        for raw in iter(stream.readline, b""):
            self.reporter.line(name, raw.decode("utf-8", "replace").rstrip("\n"))
        stream.close()

    def _events(self, fd: int, result: dict[str, Any]) -> None:
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as fh:
            for raw in fh:
                try:
                    ev = json.loads(raw)
                except ValueError:
                    continue
                kind = ev.get("type")
                if kind == "metric":
                    self.reporter.metric(ev["name"], ev["value"], ev.get("step"), ev["t"])
                elif kind == "progress":
                    self.reporter.progress = ev.get("fraction")
                elif kind == "result":
                    result["result"] = ev.get("result")
                elif kind == "describe":
                    self.described = {
                        "predict_args": ev.get("predict_args"),
                        "train_args": ev.get("train_args"),
                    }

    def _kill(self) -> None:
        """End the child's whole process group: SIGTERM, then SIGKILL after a grace period."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def main(argv: list[str] | None = None) -> int:
    """``python -m forgehub.jobs.runner --server URL --job ID``: what back ends start (the same
    as ``forgehub job run``, without loading the whole CLI). The token is read from
    FORGEHUB_JOB_TOKEN, never from the command line."""
    import argparse

    ap = argparse.ArgumentParser(prog="forgehub job run", description=main.__doc__)
    ap.add_argument("--server", default=os.environ.get("FORGEHUB_URL"), required=False)
    ap.add_argument("--job", required=True)
    args = ap.parse_args(argv)
    token = os.environ.get("FORGEHUB_JOB_TOKEN")
    if not token or not args.server:
        print("forgehub job run: FORGEHUB_JOB_TOKEN and --server are needed", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    runner = JobRun(args.server, args.job, token)
    signal.signal(signal.SIGTERM, lambda *_: runner.request_cancel())
    code = runner.run()
    if runner.reporter.cancel.is_set():
        end_as_cancelled()
    return code


def end_as_cancelled() -> None:
    """Under Slurm, a cancelled job ends by cancelling its own allocation, so that Slurm's
    accounting says CANCELLED (not FAILED) whether forgehub's scancel or the runner's own
    stop came first."""
    slurm_job = os.environ.get("SLURM_JOB_ID", "")
    if not slurm_job.isdigit() or shutil.which("scancel") is None:
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        subprocess.run(["scancel", "--quiet", slurm_job], timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        pass
    time.sleep(10)  # scancel's SIGTERM ends this process; exit anyway if it never comes


if __name__ == "__main__":
    sys.exit(main())
