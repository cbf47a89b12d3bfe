"""Adapter-level artifact throughput and peak memory (a library call per operation), with peers.

Starts a real Ceph RGW (S3), a wsgidav WebDAV server and a forgehub server (blob), then pushes
and pulls 1 MB, 100 MB and 1 GB files as artifacts through each adapter (content addressing,
verification and all), each operation in a fresh process so its peak RSS is its own. Side by
side in the same run: raw boto3 TransferManager (upload_file/download_file) on the same S3
server, and ``cp`` for local disk, plus hashing alone (hashlib SHA-256: the ceiling for any
push that must hash what it stores). Prints MB/s, the ratio to the peer, peak RSS, and the bytes
a re-push sends (0: stored once). Each operation runs ``--repeat`` times (pushes into a store
that lacks the content each time) and the fastest run counts, for forgehub and peers alike: on
a shared VM a single run of ``cp`` varies tenfold.

    python benchmarks/adapters.py [--sizes 1,100,1024] [--skip s3,webdav,blob] [--repeat 3]
"""

from __future__ import annotations

import argparse
import hashlib
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
    from forgehub.storage.blobstore import blob_key

    # set-up (imports, clients) happens before the clock starts, for forgehub and boto3 alike
    adapter = make(kind, json.loads(config)) if op in ("push", "pull", "forget") else None
    if op.startswith("boto3"):
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
    t0 = time.perf_counter()
    result: dict[str, object] = {}
    if op == "push":
        r = push_path(adapter, Path(path))  # type: ignore[arg-type]
        result = {"digest": r.digest, "uploaded": r.uploaded}
    elif op == "pull":
        pull_to(adapter, digest, "file", Path(path))  # type: ignore[arg-type]
    elif op == "hash":  # the ceiling: read and hash every byte once, nothing else
        with open(path, "rb") as fh:
            hashlib.file_digest(fh, "sha256")
    elif op == "forget":
        adapter.delete(blob_key(digest))  # type: ignore[union-attr]
    elif op == "boto3-up":
        s3.upload_file(path, cfg["bucket"], "raw/" + Path(path).name, Config=tc)
    elif op == "boto3-down":
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
    last = out.strip().splitlines()[-1] if out.strip() else ""
    data = json.loads(last) if last.startswith("{") else {}  # our children print JSON
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
    ap.add_argument("--repeat", type=int, default=3, help="runs of each operation; best counts")
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
            rgw = CephRGW(memory_mb=max(3072, 10 * max(sizes)))  # repeated 1 GB writes
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
        n = opts.repeat

        def best(args: list[str], after: list[str] | None = None) -> tuple[dict, float, float]:
            """The fastest of ``n`` runs (each followed by ``after``), and the highest RSS."""
            runs = []
            for _ in range(n):
                runs.append(run(args))
                if after:
                    run(after)
            data = min(runs, key=lambda r: float(r[0].get("seconds", r[1])))[0]
            fastest = min(float(r[0].get("seconds", r[1])) for r in runs)
            return data, fastest, max(r[2] for r in runs)

        for mb in sizes:
            src = tmp / f"src-{mb}.bin"
            make_file(src, mb)
            peer_up: dict[str, float] = {}
            peer_down: dict[str, float] = {}
            # peers
            copy = tmp / "cp-copy.bin"
            _, t, rss = best(["cp", str(src), str(copy)], ["rm", "-f", str(copy)])
            peer_up["local"] = peer_down["local"] = mb / t
            rows.append(("cp (peer)", mb, "copy", mb / t, None, rss, None))
            _, t, rss = best(me("hash", "local", "{}", str(src), "-"))
            rows.append(("sha256 only", mb, "hash", mb / t, mb / t / peer_up["local"], rss, None))
            if "s3" in adapters:
                cfg = json.dumps(adapters["s3"])
                _, t, rss = best(me("boto3-up", "s3", cfg, str(src), "-"))
                peer_up["s3"] = mb / t
                rows.append(("boto3 (peer)", mb, "push", peer_up["s3"], None, rss, None))
                down = tmp / "boto-down.bin"
                _, t, rss = best(me("boto3-down", "s3", cfg, str(down), src.name))
                peer_down["s3"] = mb / t
                rows.append(("boto3 (peer)", mb, "pull", peer_down["s3"], None, rss, None))
                down.unlink()
            for kind, cfg_d in adapters.items():
                cfg = json.dumps(cfg_d)
                push = me("push", kind, cfg, str(src), "-")
                d, _, _ = run(push)  # learn the digest, then time pushes into a store without it
                forget = me("forget", kind, cfg, "-", str(d["digest"]))
                run(forget)
                _, t, rss = best(push, forget)
                run(push)  # stored again (the last timed push was forgotten) ...
                again, _, _ = run(push)  # ... so this one finds it there
                speed = mb / t
                ratio = speed / peer_up[kind] if kind in peer_up else None
                rows.append((kind, mb, "push", speed, ratio, rss, again["uploaded"]))
                dest = tmp / f"pulled-{kind}-{mb}.bin"
                pull = me("pull", kind, cfg, str(dest), str(d["digest"]))
                _, t, rss = best(pull, ["rm", "-f", str(dest)])
                speed = mb / t
                ratio = speed / peer_down[kind] if kind in peer_down else None
                rows.append((kind, mb, "pull", speed, ratio, rss, None))
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
