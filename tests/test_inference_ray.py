"""Serverless inference on Ray (#18): an api deployment with replicas on a Ray connection runs
as a Ray Serve application against a real Ray head. Ray Serve scales its replicas (from the load
forgehub's proxy sends it, to two, and down to zero), forgehub's proxy, authorizer and metrics
stay in front, and stopping the deployment deletes the Serve application.

Ray Serve's replicas listen on every interface and nothing turns that off, so as root the test
runs in a network namespace of its own (``unshare -n``, loopback only; see SERVICES.md)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.modelapi_helpers import digit_png
from tests.services import ForgehubServer, RayHead, started
from tests.test_inference import _drive, in_thread, wait_for

# replicas scale from what a machine does under load: measured alone (see the Makefile)
pytestmark = pytest.mark.serial

ROOT = Path(__file__).resolve().parent.parent
INNER = "FORGEHUB_TEST_NETNS"


def test_ray_serve_scales_a_deployment_from_the_load_and_down_to_zero(tmp_path: Path) -> None:
    if os.environ.get(INNER) or os.geteuid() != 0 or not shutil.which("unshare"):
        _scales_on_ray_serve(tmp_path)
        return
    # the same test, in a network namespace of its own: Serve's ports reach nobody outside
    p = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            'ip link set lo up && exec "$0" -m pytest -q -p no:cacheprovider -s "$1"',
            sys.executable,
            f"{__file__}::test_ray_serve_scales_a_deployment_from_the_load_and_down_to_zero",
        ],
        cwd=ROOT,
        env={**os.environ, INNER: "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    print(p.stdout[-3000:])
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
    assert "1 passed" in p.stdout


def _scales_on_ray_serve(tmp_path: Path) -> None:
    srv = ForgehubServer(tmp_path / "data")
    with started(RayHead()) as ray_url, started(srv):
        with httpx.Client(
            base_url=srv.url,
            headers={"Authorization": f"Bearer {srv.admin_token}"},
            timeout=60,
        ) as admin:
            r = admin.post(
                "/api/v1/compute/connections",
                json={"name": "cluster", "kind": "ray", "config": {"address": ray_url}},
            )
            assert r.status_code == 201, r.text
            r = admin.post(
                "/api/v1/deployments",
                json={
                    "module": "digits",
                    "compute": "cluster",
                    "resources": {"cpu": 0.5},
                    "replicas": {"min": 0, "max": 2, "target": 1, "idle_s": 8},
                },
            )
            assert r.status_code == 201, r.text
            dep = r.json()
            d = wait_for(admin, dep["id"], lambda d: d["state"] in ("running", "failed"), 240)
            assert d["state"] == "running", d
            assert d["replicas"]["engine"] == "ray-serve"
            app_name = f"forgehub-{dep['id']}"
            apps = httpx.get(f"{ray_url}/api/serve/applications/").json()["applications"]
            assert app_name in apps, apps.keys()

            base = f"/deployments/{dep['id']}/v2/models/digits/predict/"
            image, label = digit_png(7)
            r = admin.post(base, files={"image": ("d.png", image, "image/png")})
            assert r.status_code == 200, r.text
            assert r.json()["predictions"]["labels"][0]["label"] == label
            # a second user gets nothing of it
            admin.post("/api/v1/users", json={"name": "eve"})
            tok = admin.post("/api/v1/tokens", json={"name": "t", "user": "eve"}).json()
            eve = {"Authorization": f"Bearer {tok['token']}"}
            r = httpx.post(srv.url + base, files={"image": ("d.png", image)}, headers=eve)
            assert r.status_code == 404

            seen: list[int] = []
            done, scaled = threading.Event(), threading.Event()

            def watch() -> None:
                while not done.is_set():
                    seen.append(
                        admin.get(f"/api/v1/deployments/{dep['id']}").json()["replicas"]["ready"]
                    )
                    if seen[-1] >= 2 and not scaled.is_set():
                        done.wait(5)  # a few seconds more of load on both replicas
                        scaled.set()  # then the load stops
                    time.sleep(0.5)

            watcher = threading.Thread(target=watch)
            watcher.start()
            try:
                # the load lasts until the second replica is up (starting one is slow on a busy
                # 2-core machine), for at most three minutes
                statuses = in_thread(
                    _drive(srv.url + base, srv.admin_token, 180, clients=6, until=scaled)
                )
            finally:
                done.set()
                watcher.join()
            assert statuses and set(statuses) == {200}, {
                s: statuses.count(s) for s in set(statuses)
            }
            assert max(seen) >= 2, seen  # Ray Serve added a replica under the load

            # idle: Ray Serve scales it to zero; a request then still gets its answer
            wait_for(admin, dep["id"], lambda d: d["replicas"]["ready"] == 0, timeout=120)
            r = admin.post(base, files={"image": ("d.png", image, "image/png")})
            assert r.status_code == 200, r.text
            samples = admin.get(f"/api/v1/deployments/{dep['id']}/metrics").json()["samples"]
            assert max(s["replicas"] for s in samples) >= 2
            assert any(s["rps"] > 0 for s in samples)
            print(f"requests {len(statuses)}, replicas seen {max(seen)}")

            admin.post(f"/api/v1/deployments/{dep['id']}/stop")
            stopped = wait_for(admin, dep["id"], lambda d: d["state"] in ("stopped", "failed"))
            assert stopped["state"] == "stopped", stopped
            deadline = time.monotonic() + 60
            while (
                app_name in httpx.get(f"{ray_url}/api/serve/applications/").json()["applications"]
            ):
                assert time.monotonic() < deadline, "the Serve application outlived its deployment"
                time.sleep(0.5)


if __name__ == "__main__":  # pragma: no cover - by hand
    pytest.main([__file__, "-q", "-s"])
