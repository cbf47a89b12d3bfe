"""A module's model API as a Ray Serve application: where Ray is the compute, Ray Serve runs the
replicas and scales them (min, max, target ongoing requests, down to zero), not forgehub.

``python -m forgehub.deployments.rayserve --config FILE`` is the driver the runner starts on the
Ray cluster (and the benchmark, for Ray Serve reached directly): it starts Serve's HTTP proxy on
the head node's loopback (if Serve is not up yet), deploys the application under the
deployment's path, prints ``ready`` and keeps it until it is stopped (SIGTERM), when it deletes
the application. Each replica builds the same model API as ``forgehub module serve`` (the module,
its weights, batching, and the service token that only the platform's proxy sends).

The configuration file holds the token; it is the runner's (mode 0600) and removed once read.
The token reaches the replicas in their actor options' environment, which the cluster's own
dashboard shows to whoever may use that cluster: the same trust as the job token on Ray.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

ENV = "FORGEHUB_RAYSERVE_APP"  # the replica's model API, as JSON (not the token)


def build_app() -> Any:
    """Runs in each replica: the standalone model API of the configured module."""
    from forgehub.modelapi import create_model_app
    from forgehub.module import load_all
    from forgehub.module.discovery import import_target, wrap

    cfg = json.loads(os.environ[ENV])
    if ":" in cfg["target"]:  # an import path
        module = wrap(import_target(cfg["target"]), cfg["target"], cfg["name"])
    else:  # an installed module, by name
        found = [m for m in load_all() if m.name == cfg["target"]]
        if not found:
            raise RuntimeError(f"no installed module named {cfg['target']!r} on this node")
        module = found[0]
    if cfg.get("weights"):
        module.load_weights(Path(cfg["weights"]))
    work = Path(cfg["work_dir"]) / f"replica-{os.getpid()}"
    return create_model_app(
        [module],
        f"sqlite:///{work / 'modelapi.db'}",
        work,
        enable_train=False,
        batch_size=cfg.get("batch_size"),
        batch_wait_ms=cfg.get("batch_wait_ms"),
    )


def application(cfg: dict[str, Any]) -> Any:
    """The Serve application for ``cfg`` (module, scaling, the replicas' environment)."""
    from ray import serve

    scaling = cfg.get("scaling") or {}
    env = {
        ENV: json.dumps(
            {
                k: cfg.get(k)
                for k in ("target", "name", "weights", "work_dir", "batch_size", "batch_wait_ms")
            }
        )
    }
    if cfg.get("token"):
        env["FORGEHUB_SERVICE_TOKEN"] = cfg["token"]
    if os.environ.get("PYTHONPATH"):
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    options: dict[str, Any] = {
        "name": "model_api",
        "ray_actor_options": {
            "num_cpus": float(cfg.get("cpu", 1.0)),
            "runtime_env": {"env_vars": env},
        },
        "max_ongoing_requests": int(cfg.get("max_ongoing", 100)),
    }
    if cfg.get("gpu"):
        options["ray_actor_options"]["num_gpus"] = float(cfg["gpu"])
    if scaling.get("max", 1) > 1 or scaling.get("min", 1) != 1:
        options["autoscaling_config"] = {
            "min_replicas": int(scaling.get("min", 1)),
            "initial_replicas": max(1, int(scaling.get("min", 1))),
            "max_replicas": int(scaling.get("max", 1)),
            "target_ongoing_requests": float(scaling.get("target", 4)),
            "downscale_delay_s": float(scaling.get("idle_s", 60)),
            "upscale_delay_s": 1.0,
            # react within seconds, as forgehub's own autoscaler does
            "metrics_interval_s": 1.0,
            "look_back_period_s": 3.0,
        }
    else:
        options["num_replicas"] = 1
    deployment = serve.deployment(**options)(serve.ingress(build_app)())
    return deployment.bind()


def _http_port(default: int) -> int:
    """The port Serve's HTTP proxy listens on (another driver may have started Serve first)."""
    try:
        from ray.serve.context import _get_global_client

        client = _get_global_client()
        return int(client.http_config.port) if client is not None else default
    except Exception:  # noqa: BLE001 - a private API: fall back to what was asked for
        return default


def _replicas(name: str) -> int:
    from ray import serve

    try:
        app = serve.status().applications[name]
        states = app.deployments["model_api"].replica_states
        return sum(int(n) for state, n in states.items() if str(state).endswith("RUNNING"))
    except Exception:  # noqa: BLE001 - not deployed yet, or gone
        return 0


def _write(state: Path, **values: Any) -> None:
    tmp = state.with_suffix(".tmp")
    tmp.write_text(json.dumps(values))
    tmp.replace(state)


def run(cfg: dict[str, Any], state: Path | None = None) -> None:
    import logging

    import ray
    from ray import serve

    ray.init(address=cfg.get("address") or "auto", logging_level=logging.WARNING)
    serve.start(
        http_options={"host": "127.0.0.1", "port": int(cfg["port"])},
        proxy_location="HeadOnly",
    )
    port = _http_port(int(cfg["port"]))
    name = cfg["app_name"]
    prefix = "/" + cfg["route_prefix"].strip("/")  # Serve takes no trailing slash
    serve.run(application(cfg), name=name, route_prefix=prefix, blocking=False)
    print(f"ready on port {port}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while True:
            if state is not None:
                _write(state, port=port, replicas=_replicas(name), at=time.time())
            if stop.wait(1.0) or os.getppid() == 1:  # stopped, or the runner is gone
                break
    finally:
        serve.delete(name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--state", type=Path, help="Where to write the port and replica count.")
    args = ap.parse_args(argv)
    cfg = json.loads(args.config.read_text())
    args.config.unlink(missing_ok=True)  # the token is in it
    run(cfg, args.state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
