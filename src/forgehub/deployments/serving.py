"""The runner's side of a deployment: start the service, wait until it answers, tell the
server where it listens, keep it up until asked to stop, and save its folder when asked.

The service listens on a free loopback port with forgehub's token (``FORGEHUB_SERVICE_TOKEN``
for the model API, ``JUPYTER_TOKEN`` for JupyterLab, both in its environment, never on a command
line); the platform's proxy is the only client that has it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from forgehub.jobs.reporting import PATIENCE_S

if TYPE_CHECKING:
    from forgehub.jobs.runner import JobRun

READY_WITHIN_S = 300.0
BEAT_S = 2.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _seed(files: Path, inputs: dict[str, Path]) -> None:
    """Copies of the deployment's input artifacts in its working folder (theirs to change)."""
    for name, path in inputs.items():
        if name.startswith("+"):
            continue  # the module's weights and code: not the user's files
        dest = files / name
        if path.is_dir():
            shutil.copytree(path, dest, dirs_exist_ok=True)
        else:
            shutil.copyfile(path, dest)


def command(
    run: JobRun,
    spec: dict[str, Any],
    inputs: dict[str, Path],
    work: Path,
    env: dict[str, str],
    port: int,
) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
    """argv, environment, the URL that answers once it is up, and the header it needs."""
    svc = spec["service"]
    base, token = svc["base_path"], svc["token"]
    if svc["kind"] == "jupyterlab":
        files = work / "files"
        argv = [
            sys.executable,
            "-m",
            "jupyterlab",
            "--ip=127.0.0.1",
            f"--port={port}",
            "--no-browser",
            f"--ServerApp.base_url={base}",
            f"--ServerApp.root_dir={files}",
            "--ServerApp.port_retries=0",
            "--ServerApp.allow_origin=*",  # the platform's proxy is its only client
        ]
        if os.geteuid() == 0:  # a container's root: Jupyter refuses unless told
            argv.append("--allow-root")
        jupyter = work / ".jupyter"
        env = {
            **env,
            "JUPYTER_TOKEN": token,
            "HOME": str(work),
            "JUPYTER_CONFIG_DIR": str(jupyter / "config"),
            "JUPYTER_DATA_DIR": str(jupyter / "data"),
            "JUPYTER_RUNTIME_DIR": str(jupyter / "runtime"),
            "IPYTHONDIR": str(jupyter / "ipython"),
        }
        return argv, env, f"{base}api/status", {"Authorization": f"token {token}"}
    if svc.get("ray_serve") is not None:
        return _ray_serve(spec, inputs, work, env, port)
    from forgehub.jobs.runner import cache_root

    target = spec.get("module_source") or spec.get("module_target") or spec["module"]
    argv = [
        sys.executable,
        "-m",
        "forgehub.cli",
        "module",
        "serve",
        target,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--base-path",
        base,
        "--data-dir",
        str(work / "data"),
        "--model-name",
        spec["module"],
        "--no-train",  # trainings are jobs; a service only answers
    ]
    if "+weights" in inputs:
        argv += ["--weights", str(inputs["+weights"])]
    size, wait = svc.get("batch") or (None, None)
    if size is not None:
        argv += ["--batch-size", str(int(size))]
    if wait is not None:
        argv += ["--batch-wait-ms", str(float(wait))]
    if run.environment is not None:  # the lock the runner built: the same environment
        lock = work / "lock.json"
        lock.write_text(json.dumps(run.environment["lock"]))
        argv += ["--lock", str(lock)]
    env = {
        **env,
        "FORGEHUB_SERVICE_TOKEN": token,
        "FORGEHUB_CACHE_DIR": str(cache_root()),
        "FORGEHUB_SANDBOX": "on"
        if spec.get("sandbox") == "on"
        else env.get("FORGEHUB_SANDBOX", "off"),
    }
    return argv, env, f"{base}v2/", {"X-Forgehub-Service-Token": token}


def _ray_serve(
    spec: dict[str, Any], inputs: dict[str, Path], work: Path, env: dict[str, str], port: int
) -> tuple[list[str], dict[str, str], str, dict[str, str]]:
    """On a Ray cluster: the module's model API as a Ray Serve application, whose replicas
    and autoscaling are Ray Serve's (see :mod:`forgehub.deployments.rayserve`)."""
    svc = spec["service"]
    size, wait = svc.get("batch") or (None, None)
    res = spec["resources"]
    cfg = {
        "port": port,
        "app_name": f"forgehub-{svc['deployment']}",
        "route_prefix": svc["base_path"],
        "target": spec.get("module_target") or spec["module"],
        "name": spec["module"],
        "weights": str(inputs["+weights"]) if "+weights" in inputs else None,
        "work_dir": str(work / "replicas"),
        "batch_size": size,
        "batch_wait_ms": wait,
        "token": svc["token"],
        "scaling": svc["ray_serve"],
        "cpu": float(svc.get("replica_cpu") or res.get("cpu") or 1.0),
        "gpu": int(res.get("gpu") or 0),
    }
    path = work / "rayserve-config.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(cfg, fh)
    argv = [
        sys.executable,
        "-m",
        "forgehub.deployments.rayserve",
        "--config",
        str(path),
        "--state",
        str(work / RAY_STATE),
    ]
    headers = {"X-Forgehub-Service-Token": svc["token"]}
    return argv, env, f"{svc['base_path']}v2/", headers


RAY_STATE = "rayserve-state.json"


def _ray_state(work: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((work / RAY_STATE).read_text()))
    except (OSError, ValueError):
        return {}


def serve(
    run: JobRun,
    spec: dict[str, Any],
    inputs: dict[str, Path],
    work: Path,
    env: dict[str, str],
    built: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """Run the service until it is stopped (a cancel) or ends by itself (a failure). ``built``
    is the module's own environment and overlay, when it has one (a module from a source)."""
    from forgehub.jobs.runner import _pdeathsig_and_limits

    files = work / "files"
    files.mkdir(exist_ok=True)
    _seed(files, inputs)
    port = free_port()
    argv, env, probe, headers = command(run, spec, inputs, work, env, port)
    if built is not None and spec["service"]["kind"] == "jupyterlab":
        argv += _module_kernel(Path(env["JUPYTER_DATA_DIR"]), spec["module"], *built)
    say = run.reporter.line
    say("system", f"starting the {spec['service']['kind']} service on port {port}")
    res = spec["resources"]
    run.proc = subprocess.Popen(
        argv,
        cwd=files,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_pdeathsig_and_limits(int(res.get("memory_mb", 0))),
    )
    for stream, name in ((run.proc.stdout, "stdout"), (run.proc.stderr, "stderr")):
        threading.Thread(target=run._pump, args=(stream, name), daemon=True).start()
    ray_serve = spec["service"].get("ray_serve") is not None
    if ray_serve:  # Serve's proxy may already listen elsewhere: the driver says where
        port = _wait_for(run, lambda: _ray_state(work).get("port"))
    _wait_ready(run, f"http://127.0.0.1:{port}{probe}", headers)
    address = f"127.0.0.1:{port}"
    if spec["service"].get("reach") == "tunnel":
        stop = _tunnel(run, address, str(spec["service"].get("deployment") or ""))
        address = "tunnel"
        say("system", "connected to the server through a tunnel (no inbound connection needed)")
    else:
        stop = None
    say("system", "the service answers; reachable through the platform")
    try:
        _keep(run, spec, files, address, (lambda: _ray_state(work)) if ray_serve else None)
    finally:
        if stop is not None:
            stop()
    return {}  # not reached: _keep ends with a cancel or a failure


KERNEL = (
    "import sys; sys.path += {site!r}; from ipykernel import kernelapp; "
    "kernelapp.launch_new_instance()"
)


def _module_kernel(data_dir: Path, module: str, env_dir: Path, overlay: Path) -> list[str]:
    """A Jupyter kernel in the module's own environment, the lab's default: its interpreter
    and packages first, then this installation's ipykernel (the same Python: the environment
    was made from it) for what the environment lacks. Returns the lab's extra arguments."""
    from forgehub.envs import environments as envs

    site = [p for p in sys.path if p.endswith("site-packages")]
    spec = {
        "argv": [
            envs.interpreter(env_dir),
            "-c",
            KERNEL.format(site=site),
            "-f",
            "{connection_file}",
        ],
        "display_name": f"Python ({module}'s environment)",
        "language": "python",
        "env": {
            k: v
            for k, v in envs.module_env(env_dir, overlay, {}).items()
            if k in ("PYTHONPATH", "PYTHONNOUSERSITE", "VIRTUAL_ENV")
        },
    }
    folder = data_dir / "kernels" / "module"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kernel.json").write_text(json.dumps(spec))
    return ["--MappingKernelManager.default_kernel_name=module"]


def _wait_for(run: JobRun, fn: Any) -> Any:
    deadline = time.monotonic() + READY_WITHIN_S
    assert run.proc is not None
    while time.monotonic() < deadline:
        run.check()
        if run.proc.poll() is not None:
            raise RuntimeError(f"the service ended before it started ({run.proc.returncode})")
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"the service did not start within {READY_WITHIN_S:.0f} s")


def _keep(
    run: JobRun,
    spec: dict[str, Any],
    files: Path,
    address: str,
    engine: Any = None,
) -> None:
    """Keep the service up: heartbeats (with the replicas Ray Serve runs, from ``engine``),
    saves on request; until stopped or it ends."""
    from forgehub.jobs.runner import Cancelled

    assert run.proc is not None
    res = spec["resources"]

    def beat() -> dict[str, Any]:
        body: dict[str, Any] = {"address": address}
        if engine is not None:
            body["replicas"] = engine().get("replicas")
        try:  # patient through a restart, not beyond: the reporter gives up then too
            return dict(run.api.call("service", body, patience_s=give_up_s))
        except ConnectionError:
            run.reporter.give_up()
            return {}

    give_up_s = run.reporter.give_up_s or PATIENCE_S
    answer = beat()
    deadline = time.monotonic() + float(res.get("time_limit_s", 30 * 86400))
    next_beat = time.monotonic() + BEAT_S
    while True:
        if run.proc.poll() is not None:
            raise RuntimeError(f"the service ended by itself (exit code {run.proc.returncode})")
        if run.reporter.cancel.is_set():
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"time limit of {res.get('time_limit_s')} s exceeded")
        if answer.get("save"):
            _save(run, spec, files, answer["save"])
            answer = beat()
            continue
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + (1.0 if engine is not None else BEAT_S)
            answer = beat()
        time.sleep(0.1)
    if spec["service"]["kind"] == "jupyterlab":  # nothing is lost when it stops
        _save(run, spec, files, {"id": "on-stop", "path": ".", "name": None})
    run._kill()  # the service's whole process tree, as a cancelled job's
    raise Cancelled()


def _tunnel(run: JobRun, local: str, deployment: str) -> Any:
    """Keep a reverse tunnel to the server open (reconnecting) in a thread of its own; returns
    the function that closes it. Returns once the first connection is up. The URL names the
    deployment, so that a load balancer sends the tunnel where the deployment's requests go."""
    import asyncio

    from forgehub.deployments.tunnel import client

    base = run.api.base.rstrip("/")
    url = "ws" + base[4:] if base.startswith("http") else base
    url += f"/api/v1/jobs/{run.job_id}/runner/tunnel"
    if deployment:
        url += "?" + urllib.parse.urlencode({"deployment": deployment})
    up = threading.Event()
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()

    async def forever() -> None:
        delay = 0.5
        while not stop.is_set():
            try:
                await client(url, run.api.token, local, up.set, stop)
                delay = 0.5
            except Exception as exc:  # noqa: BLE001 - the server restarts, the network blips
                run.reporter.line("system", f"tunnel lost ({type(exc).__name__}); reconnecting")
            if not stop.is_set():
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)

    thread = threading.Thread(target=loop.run_until_complete, args=(forever(),), daemon=True)
    thread.start()
    if not up.wait(30):
        raise RuntimeError("could not open the tunnel to the server")

    def close() -> None:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=10)

    return close


def _wait_ready(run: JobRun, url: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    assert run.proc is not None
    with httpx.Client(timeout=2.0) as http:
        while time.monotonic() < deadline:
            run.check()
            if run.proc.poll() is not None:
                raise RuntimeError(
                    f"the service ended before it answered (exit code {run.proc.returncode})"
                )
            try:
                if http.get(url, headers=headers).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
    raise RuntimeError(f"the service did not answer within {READY_WITHIN_S:.0f} s")


def _save(run: JobRun, spec: dict[str, Any], files: Path, req: dict[str, Any]) -> None:
    """Push the working folder (or a folder in it) as an artifact and tell the server."""
    from forgehub.artifacts.content import push_path
    from forgehub.jobs.runner import storage_adapter

    target = (files / req["path"]).resolve()
    if not target.is_relative_to(files.resolve()) or not target.exists():
        run.api.call("saved", {"request": req["id"], "error": f"no folder {req['path']!r}"})
        return
    run.reporter.line("system", f"saving {req['path']} as an artifact")
    adapter = storage_adapter(spec["output_storage"], run.api)
    pushed = run.patiently("save", lambda: push_path(adapter, target))
    run.api.call(
        "saved",
        {
            "request": req["id"],
            "name": req.get("name"),
            "digest": pushed.digest,
            "kind": pushed.kind,
            "size": pushed.size,
            "filename": target.name if req["path"] != "." else "files",
        },
    )
