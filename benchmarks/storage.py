"""Artifact push/pull throughput and peak memory through each storage adapter, with peers.

Starts a real Ceph RGW (S3), a wsgidav WebDAV server and a forgehub server (blob), then pushes
and pulls 1 MB, 100 MB and 1 GB files as artifacts through each adapter (content addressing,
verification and all), each operation in a fresh process so its peak RSS is its own. Side by
side in the same run: raw boto3 TransferManager (upload_file/download_file) on the same S3
server, and ``cp`` for local disk. Prints MB/s, the ratio to the peer, peak RSS, and the bytes
a re-push sends (0: stored once).

    python benchmarks/storage.py [--sizes 1,100,1024] [--skip s3,webdav,blob]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def child(op: str, kind: str, config: str, path: str, digest: str) -> None:
    """One operation, in its own process; prints JSON with seconds and bytes uploaded."""
    from forgehub.artifacts.content import pull_to, push_path
    from forgehub.storage import make

    t0 = time.perf_counter()
    result: dict[str, object] = {}
    if op == "push":
        adapter = make(kind, json.loads(config))
        r = push_path(adapter, Path(path))
        result = {"digest": r.digest, "uploaded": r.uploaded}
    elif op == "pull":
        adapter = make(kind, json.loads(config))
        pull_to(adapter, digest, "file", Path(path))
    elif op == "boto3-up" or op == "boto3-down":
        import boto3
        from boto3.s3.transfer import TransferConfig

        cfg = json.loads(config)
        s3 = boto3.client(
            "s3",
            endpoint_url=cfg["endpoint_url"],
            aws_access_key_id=cfg["access_key_id"],
            aws_secret_access_key=cfg["secret_access_key"],
            region_name="us-east-1",
        )
        tc = TransferConfig(
            multipart_threshold=16 << 20, multipart_chunksize=16 << 20, max_concurrency=8
        )
        if op == "boto3-up":
            s3.upload_file(path, cfg["bucket"], "raw/" + Path(path).name, Config=tc)
        else:
            s3.download_file(cfg["bucket"], "raw/" + digest, path, Config=tc)
    result["seconds"] = time.perf_counter() - t0
    print(json.dumps(result))


def run(args: list[str]) -> tuple[dict[str, object], float, float]:
    """Run a child; returns its JSON, wall seconds and peak RSS in MB.

    Dirty pages are flushed first, so no operation pays for the previous one's writes."""
    os.sync()
    t0 = time.perf_counter()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode() if proc.stdout else ""
    errout = proc.stderr.read().decode() if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{args[:3]} failed: {errout[-2000:]}")
    data = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    return data, wall, usage.ru_maxrss / 1024


def me(*extra: str) -> list[str]:
    return [sys.executable, __file__, "--child", *extra]


def make_file(path: Path, mb: int) -> None:
    with open(path, "wb") as fh:
        for _ in range(mb):
            fh.write(os.urandom(1 << 20))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="1,100,1024", help="sizes in MB")
    ap.add_argument("--skip", default="", help="adapters to skip")
    ap.add_argument("--child", nargs=5, help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        child(*opts.child)
        return
    from tests.services import (
        S3_ACCESS,
        S3_SECRET,
        WEBDAV_PASSWORD,
        WEBDAV_USER,
        CephRGW,
        ForgehubServer,
        WsgiDAV,
    )

    skip = set(filter(None, opts.skip.split(",")))
    sizes = [int(s) for s in opts.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="fh-storage-bench-", dir=os.environ.get("BENCH_DIR")))
    services: list[object] = []
    adapters: dict[str, dict[str, object]] = {"local": {"path": str(tmp / "local-store")}}
    try:
        if "s3" not in skip:
            rgw = CephRGW()
            services.append(rgw)
            url = rgw.start()
            adapters["s3"] = {
                "endpoint_url": url,
                "bucket": "bench",
                "access_key_id": S3_ACCESS,
                "secret_access_key": S3_SECRET,
            }
        if "webdav" not in skip:
            dav = WsgiDAV()
            services.append(dav)
            adapters["webdav"] = {
                "url": dav.start() + "/bench",
                "username": WEBDAV_USER,
                "password": WEBDAV_PASSWORD,
            }
        if "blob" not in skip:
            srv = ForgehubServer(tmp / "server", FORGEHUB_LOG_LEVEL="warning")
            services.append(srv)
            adapters["blob"] = {"url": srv.start(), "token": srv.admin_token}
        if "s3" in adapters:  # warm the new cluster (pools are created on the first write)
            warm = tmp / "warm.bin"
            make_file(warm, 1)
            run(me("push", "s3", json.dumps(adapters["s3"]), str(warm), "-"))
        rows = []
        for mb in sizes:
            src = tmp / f"src-{mb}.bin"
            make_file(src, mb)
            peer_up: dict[str, float] = {}
            peer_down: dict[str, float] = {}
            # peers
            _, t, rss = run(["cp", str(src), str(tmp / "cp-copy.bin")])
            peer_up["local"] = peer_down["local"] = mb / t
            rows.append(("cp (peer)", mb, "copy", mb / t, None, rss, None))
            (tmp / "cp-copy.bin").unlink()
            if "s3" in adapters:
                cfg = json.dumps(adapters["s3"])
                d, t, rss = run(me("boto3-up", "s3", cfg, str(src), "-"))
                peer_up["s3"] = mb / d["seconds"]  # type: ignore[operator]
                rows.append(("boto3 (peer)", mb, "push", peer_up["s3"], None, rss, None))
                d, t, rss = run(me("boto3-down", "s3", cfg, str(tmp / "boto-down.bin"), src.name))
                peer_down["s3"] = mb / d["seconds"]  # type: ignore[operator]
                rows.append(("boto3 (peer)", mb, "pull", peer_down["s3"], None, rss, None))
                (tmp / "boto-down.bin").unlink()
            for kind, cfg_d in adapters.items():
                cfg = json.dumps(cfg_d)
                d, _, rss = run(me("push", kind, cfg, str(src), "-"))
                speed = mb / d["seconds"]  # type: ignore[operator]
                ratio = speed / peer_up[kind] if kind in peer_up else None
                again, _, _ = run(me("push", kind, cfg, str(src), "-"))
                rows.append((kind, mb, "push", speed, ratio, rss, again["uploaded"]))
                dest = tmp / f"pulled-{kind}-{mb}.bin"
                d2, _, rss = run(me("pull", kind, cfg, str(dest), str(d["digest"])))
                speed = mb / d2["seconds"]  # type: ignore[operator]
                ratio = speed / peer_down[kind] if kind in peer_down else None
                rows.append((kind, mb, "pull", speed, ratio, rss, None))
                dest.unlink()
            src.unlink()
        print(
            f"\nstorage benchmark ({os.cpu_count()} CPUs; each operation in its own process;"
            " ratio = forgehub / peer on the same server)\n"
        )
        header = (
            f"{'adapter':<14}{'size':>8}  {'op':<5}{'MB/s':>9}{'ratio':>8}"
            f"{'peak RSS MB':>13}{'re-push sent':>14}"
        )
        print(header)
        print("-" * len(header))
        for name, mb, op, speed, ratio, rss, again in rows:
            print(
                f"{name:<14}{mb:>6}MB  {op:<5}{speed:>9.0f}"
                f"{(f'{ratio:.2f}x' if ratio else '-'):>8}{rss:>13.0f}"
                f"{('-' if again is None else f'{again} B'):>14}"
            )
        print(
            "\ntargets: >= 0.9x boto3 on S3, >= 0.8x cp on local, peak RSS < 150 MB at 1 GB, "
            "re-push sends 0 B"
        )
    finally:
        for svc in reversed(services):
            svc.stop()  # type: ignore[attr-defined]
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
