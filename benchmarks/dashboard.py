"""Server time per dashboard page with 10,000 jobs (and 2,000 artifacts) in the store.

Fills a fresh SQLite store, then asks each page N times in-process (no network) and prints the
median and p95 server time. Target: below 100 ms per page.

Usage: python benchmarks/dashboard.py [--jobs 10000] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=30)
    a = ap.parse_args()
    from fastapi.testclient import TestClient

    from forgehub.config import Settings
    from forgehub.db.models import Artifact, ComputeConnection, Job, JobEvent, User, utcnow
    from forgehub.jobs.service import ensure_default_compute
    from forgehub.server import create_app

    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="fh-bench-dash-")))
    with TestClient(create_app(settings)) as c:
        token = settings.admin_token_file.read_text().strip()
        c.post("/login", data={"token": token, "next": "/"}, follow_redirects=False)
        c.get("/storage")  # makes the default storage connection
        db = c.app.state.db  # type: ignore[attr-defined]
        with db.session() as s:
            admin = s.query(User).one()
            local = ensure_default_compute(s, admin.id)
            from forgehub.db.models import StorageConnection

            store = s.query(StorageConnection).one()
            now = utcnow()
            jobs = [
                Job(
                    owner_id=admin.id,
                    kind="train",
                    module="digits",
                    spec={"args": {}},
                    compute_id=local.id,
                    storage_id=store.id,
                    state=["succeeded", "failed", "running", "queued"][i % 4],
                    created_at=now - timedelta(seconds=i),
                )
                for i in range(a.jobs)
            ]
            s.add_all(jobs)
            s.flush()
            s.add_all(JobEvent(job_id=j.id, state="queued") for j in jobs)
            s.add_all(
                Artifact(
                    owner_id=admin.id,
                    digest=f"sha256:{i:064x}",
                    kind="file",
                    size=i,
                    filename=f"f{i}.bin",
                )
                for i in range(2000)
            )
            one = jobs[0].id
            assert s.query(ComputeConnection).count() >= 2
        pages = [
            "/",
            "/?q=digits",
            "/modules/digits",
            "/modules/digits/train",
            "/jobs",
            "/jobs?state=failed&page=40",
            f"/jobs/{one}",
            "/storage",
            "/compute",
            "/tokens",
        ]
        print(f"{'page':<32} {'median':>8} {'p95':>8}   ({a.jobs} jobs in the store)")
        for p in pages:
            times = []
            for _ in range(a.repeat):
                t0 = time.perf_counter()
                r = c.get(p)
                times.append((time.perf_counter() - t0) * 1000)
                assert r.status_code == 200, (p, r.status_code)
            times.sort()
            p95 = times[int(0.95 * (len(times) - 1))]
            flag = "" if p95 < 100 else "  over the 100 ms target"
            print(f"{p:<32} {statistics.median(times):>6.1f}ms {p95:>6.1f}ms{flag}")


if __name__ == "__main__":
    main()
