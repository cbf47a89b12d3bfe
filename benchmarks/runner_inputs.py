"""What a job waits for before it starts: its runner fetching a folder input from S3.

Starts a real Ceph RGW and a forgehub server with an S3 connection to it, pushes a folder of
``--files`` files of 4 KB with ``forgehub artifact push --to rgw``, submits a job with it as
input and claims the job as a worker would, for the job token. Then, interleaved over
``--rounds`` rounds, each into an empty folder and a fresh content cache:

* forgehub, grants: the runner's own code (``cache.materialise``) with signed requests the
  server grants per object (how a runner on its owner's compute reads S3: it never holds the
  keys);
* forgehub, relay: the same through the server's relay (how a shared worker reads it);
* s5cmd: ``s5cmd cp 's3://…/*' DEST/`` of the same files stored one object each (what a job
  script would run by hand, with the keys).

Prints medians with [min-max] and the ratio s5cmd / forgehub (above 1.0: forgehub is faster).

    python benchmarks/runner_inputs.py [--rounds 3] [--files 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
BUCKET = "bench"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--files", type=int, default=20_000)
    opts = ap.parse_args()

    import boto3
    import httpx
    from benchmarks.storage import make_tree, med
    from pydantic import SecretStr
    from tests.services import S3_ACCESS, S3_SECRET, CephRGW, ForgehubServer

    from forgehub.artifacts.cache import ContentCache, materialise
    from forgehub.jobs.relay import GrantStorage, RelayStorage

    tmp = Path(tempfile.mkdtemp(prefix="fh-runner-bench-", dir=os.environ.get("BENCH_DIR")))
    rgw = CephRGW(memory_mb=4096)
    srv = ForgehubServer(tmp / "server", FORGEHUB_JOB_LEASE_S="3600")  # no heartbeats here
    try:
        url = rgw.start()
        server = srv.start()
        auth = {"Authorization": f"Bearer {srv.admin_token}"}
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=S3_ACCESS,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        config = {
            "endpoint_url": url,
            "bucket": BUCKET,
            "prefix": "fh",
            "access_key_id": S3_ACCESS,
            "secret_access_key": S3_SECRET,
        }
        api = httpx.Client(base_url=server, headers=auth, timeout=600)
        api.post(
            "/api/v1/storage/connections", json={"name": "rgw", "kind": "s3", "config": config}
        ).raise_for_status()
        env = {
            **os.environ,
            "FORGEHUB_URL": server,
            "FORGEHUB_TOKEN": srv.admin_token,
            "AWS_ACCESS_KEY_ID": S3_ACCESS,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": "us-east-1",
        }
        tree = make_tree(tmp / "dataset", opts.files)
        out = subprocess.run(
            [str(BIN / "forgehub"), "artifact", "push", str(tree), "--to", "rgw", "--json"],
            env={**env, "FORGEHUB_CACHE_DIR": str(tmp / "push-cache")},
            capture_output=True,
            text=True,
            check=True,
        )
        digest = json.loads(out.stdout)["digest"]
        s5 = [str(BIN / "s5cmd"), "--endpoint-url", url]
        subprocess.run(
            [*s5, "cp", f"{tree}/*", f"s3://{BUCKET}/s5/"], env=env, check=True, capture_output=True
        )
        # a job with the dataset as input, claimed as a worker would: its token
        worker = api.post("/api/v1/workers", json={"name": "bench"}).json()
        job = api.post(
            "/api/v1/jobs",
            json={
                "module": "digits",
                "compute": "workers",
                "inputs": {"dataset": digest},
                "storage": "rgw",
            },
        ).json()
        got = api.post(f"/api/v1/workers/{worker['id']}/claim", json={"wait": 5}).json()
        token = got["token"]
        spec = httpx.post(
            f"{server}/api/v1/jobs/{job['id']}/runner/start",
            json={},
            headers={"Authorization": f"Bearer {token}"},
        ).json()
        item = spec["inputs"][0]
        assert item["storage"]["kind"] == "grants", item["storage"]
        cfg = RelayStorage.Config(
            url=server,
            job_id=job["id"],
            connection=item["storage"]["config"]["connection"],
            token=SecretStr(token),
        )

        def forgehub(adapter: Any) -> float:
            cache = ContentCache(tmp / "cache", 50 << 30)
            dest = tmp / "input"
            t = time.perf_counter()
            materialise(cache, adapter, digest, "dir", dest)
            wall = time.perf_counter() - t
            assert sum(1 for p in dest.rglob("*") if p.is_file()) == opts.files
            shutil.rmtree(dest)
            shutil.rmtree(tmp / "cache")
            return wall

        def s5cmd() -> float:
            dest = tmp / "s5-input"
            dest.mkdir()
            t = time.perf_counter()
            subprocess.run(
                [*s5, "cp", f"s3://{BUCKET}/s5/*", f"{dest}/"],
                env=env,
                check=True,
                capture_output=True,
            )
            wall = time.perf_counter() - t
            shutil.rmtree(dest)
            return wall

        sides = {
            "forgehub, grants": lambda: forgehub(GrantStorage(cfg)),
            "forgehub, relay": lambda: forgehub(RelayStorage(cfg)),
            "s5cmd": s5cmd,
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        names = list(sides)
        for rnd in range(opts.rounds):
            print(f"round {rnd + 1}/{opts.rounds}", file=sys.stderr, flush=True)
            for name in names[rnd % 3 :] + names[: rnd % 3]:  # interleaved
                os.sync()
                times[name].append(sides[name]())
        peer = statistics.median(times["s5cmd"])
        print(f"\na runner fetching {opts.files:,} files of 4 KB from RGW; seconds, median")
        print(f"[min-max] over {opts.rounds} rounds; ratio = s5cmd / this")
        for name, xs in times.items():
            ratio = "" if name == "s5cmd" else f"{peer / statistics.median(xs):6.2f}x"
            print(f"{name:20}{med(xs):>24}  {ratio}")
    finally:
        srv.stop()
        rgw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
