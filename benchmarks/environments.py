"""Module environments: forgehub's uv-built, content-addressed environments against the plain way.

1. **Cold build.** A module (a wheel built here) that needs numpy, pillow and pydantic, made
   ready to run in a new environment:
   - forgehub: what a runner does for code it has not run before: resolve the lock
     (``uv pip compile``) and build the environment (``uv venv`` + ``uv pip sync`` + the
     module), into an empty environment cache;
   - pip: ``python -m venv`` + ``pip install`` of the same wheel (pip resolves the same
     requirements), at this machine's pip defaults.
   Both have their package caches warm (one unmeasured round each first): the comparison is of
   the build, not of the network.
2. **Warm job start.** A training job of that module, from ``POST /api/v1/jobs`` to
   ``succeeded``, through a real server on ``local`` compute (sandboxed):
   - installed: the module importable by the server's own Python (``FORGEHUB_MODULES``);
   - from its source: the same module as ``wheel:…``, its environment already built.

Sides interleave, the order alternating each round; medians with [min–max].

    python benchmarks/environments.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.module_sources import module_folder, pinned_wheels  # noqa: E402
from tests.services import ForgehubServer, started  # noqa: E402

from forgehub.envs import environments as envs  # noqa: E402
from forgehub.envs.sources import Source  # noqa: E402

REQUIREMENTS = ["numpy", "pillow", "pydantic>=2"]


def build_wheel(folder: Path, out: Path) -> Path:
    subprocess.run(
        [envs.uv_bin(), "build", "--wheel", "--quiet", "--out-dir", str(out), str(folder)],
        check=True,
        capture_output=True,
    )
    return next(out.glob("*.whl"))


def cold_forgehub(wheel: Path, src: Source, where: Path) -> float:
    root = where / "envs"
    t0 = time.perf_counter()
    lock = envs.lock(src, lambda _m: None, wheel)
    envs.ensure(lock, root, lambda _m: None, wheel)
    took = time.perf_counter() - t0
    shutil.rmtree(root)
    return took


def cold_pip(wheel: Path, where: Path) -> float:
    venv = where / "venv"
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
    )
    took = time.perf_counter() - t0
    shutil.rmtree(venv)
    return took


def job_time(api: httpx.Client, body: dict[str, object]) -> float:
    t0 = time.perf_counter()
    r = api.post("/api/v1/jobs", json=body)
    r.raise_for_status()
    job_id = r.json()["id"]
    while True:
        j = api.get(f"/api/v1/jobs/{job_id}").json()
        if j["state"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.01)
    if j["state"] != "succeeded":
        raise SystemExit(f"job {job_id} {j['state']}: {j.get('error')}")
    return time.perf_counter() - t0


def interleave(sides: dict[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for fn in sides.values():  # warm-up: caches filled, nothing measured
        fn()
    for i in range(rounds):
        for name in order if i % 2 == 0 else order[::-1]:
            times[name].append(sides[name]())
    return times


def row(name: str, xs: list[float], base: list[float] | None) -> str:
    med = statistics.median(xs)
    ratio = f"{med / statistics.median(base):6.2f}×" if base else "      "
    return f"  {name:<34} {med:8.3f} s  [{min(xs):.3f}–{max(xs):.3f}]  {ratio}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    opts = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="forgehub-bench-env-") as tmp_:
        tmp = Path(tmp_)
        links = pinned_wheels(tmp / "links")
        folder = module_folder(tmp / "leafnet", "leafnet", "1.0")
        pyproject = folder / "pyproject.toml"
        deps = ", ".join(f'"{r}"' for r in [*REQUIREMENTS, "pinned-dep==1.0"])
        pyproject.write_text(
            pyproject.read_text().replace('["pydantic>=2", "pinned-dep==1.0"]', f"[{deps}]")
        )
        wheel = build_wheel(folder, tmp / "dist")
        digest = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
        src = Source("wheel", digest, filename=wheel.name)
        os.environ["UV_FIND_LINKS"] = str(links)
        os.environ["PIP_FIND_LINKS"] = f"{os.environ.get('PIP_FIND_LINKS', '')} {links}".strip()

        print(f"cold environment build: {wheel.name} + {', '.join(REQUIREMENTS)}")
        cold = interleave(
            {
                "forgehub (uv lock + build)": lambda: cold_forgehub(wheel, src, tmp),
                "python -m venv + pip install": lambda: cold_pip(wheel, tmp),
            },
            opts.rounds,
        )
        print(row("python -m venv + pip install", cold["python -m venv + pip install"], None))
        print(
            row(
                "forgehub (uv lock + build)",
                cold["forgehub (uv lock + build)"],
                cold["python -m venv + pip install"],
            )
        )
        pip_med = statistics.median(cold["python -m venv + pip install"])
        fh_med = statistics.median(cold["forgehub (uv lock + build)"])
        print(f"  forgehub builds {pip_med / fh_med:.1f}× faster than pip")

        # the installed side: the same module and its dependency on the server's import path
        site = tmp / "site"
        with zipfile.ZipFile(next(links.glob("pinned_dep-1.0-*.whl"))) as zf:
            zf.extractall(site)
        shutil.copytree(folder / "leafnet", site / "leafnet")
        srv = ForgehubServer(
            tmp / "data",
            FORGEHUB_CACHE_DIR=str(tmp / "cache"),
            FORGEHUB_MODULES="leafnet:Model",
            PYTHONPATH=str(site),
            UV_FIND_LINKS=str(links),
        )
        with (
            started(srv),
            httpx.Client(
                base_url=srv.url,
                headers={"Authorization": f"Bearer {srv.admin_token}"},
                timeout=120,
            ) as api,
        ):
            r = api.post(
                "/api/v1/artifacts",
                params={"filename": wheel.name, "name": "leafnet-source"},
                content=wheel.read_bytes(),
            )
            r.raise_for_status()
            installed = {"module": "leafnet", "args": {"label": "x"}}
            sourced = {"source": f"wheel:{digest}", "module": "leafnet-src", "args": {"label": "x"}}
            print("\njob start, POST /api/v1/jobs to succeeded (local compute, sandboxed):")
            warm = interleave(
                {
                    "installed module": lambda: job_time(api, installed),
                    "from its source, warm environment": lambda: job_time(api, sourced),
                },
                opts.rounds,
            )
        print(row("installed module", warm["installed module"], None))
        print(
            row(
                "from its source, warm environment",
                warm["from its source, warm environment"],
                warm["installed module"],
            )
        )


if __name__ == "__main__":
    main()
