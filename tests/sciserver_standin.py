"""A STAND-IN for SciServer, for tests only: not SciServer.

SciServer (Java/Spring on Kubernetes) cannot run here, so this small server speaks the two
protocols forgehub's ``sciserver`` adapters use, written from ``../shared/SCISERVER.md``:

* the Files service under ``/fileservice/`` (volumes, ``jsontree``, whole-file PUT and GET,
  folders, delete, copy and move), on a folder of this machine;
* JOBM under ``/racm/jobm/rest/`` (compute domains, Docker jobs with their status bit flags,
  cancel), which runs each submitted shell command as a local process (no Docker), with the
  job's stdout and stderr written to its results folder on the Files service.

Every call needs ``X-Auth-Token``. A user writes only their own user volumes (``Storage/<user>/…``,
``Temporary/<user>/…``); data volumes are read-only. Like SciServer, an upload is written in place
(a broken upload leaves a partial file: atomicity is the client's business), a missing file
answers 404 (``quiet=false`` on an existing one: 500), and errors carry a JSON ``error`` message.

Run: ``python -m tests.sciserver_standin --port P --dir D --user alice:TOKEN [--slots 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

PENDING, QUEUED, ACCEPTED, STARTED, FINISHED, SUCCESS, ERROR, CANCELED = (
    1,
    2,
    4,
    8,
    16,
    32,
    64,
    128,
)
TOP_VOLUMES = ("Storage", "Temporary")
DATA_VOLUMES = ("SDSS_DAS",)
DOMAIN = "Small Jobs Domain"
IMAGE = "SciServer Essentials"


def now_ms() -> int:
    return int(time.time() * 1000)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


class Failure(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class StandIn:
    def __init__(self, root: Path, users: dict[str, str], slots: int, base: str) -> None:
        self.root = root
        self.users = users  # token -> user name
        self.slots = slots
        self.base = base
        self.jobs: dict[int, dict[str, Any]] = {}
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.lock = threading.Lock()
        self.next_id = 1000
        for user in set(users.values()):
            for top, vol in (("Storage", "persistent"), ("Temporary", "scratch")):
                (root / top / user / vol).mkdir(parents=True, exist_ok=True)
        (root / "SDSS_DAS").mkdir(parents=True, exist_ok=True)
        (root / "SDSS_DAS" / "README.txt").write_text("a read-only data volume\n")
        threading.Thread(target=self._schedule, daemon=True).start()

    # -- files -----------------------------------------------------------------------------
    def user(self, request: Request) -> str:
        token = request.headers.get("x-auth-token", "")
        if token not in self.users:
            raise Failure(401, "invalid or missing X-Auth-Token")
        return self.users[token]

    def path(self, raw: str, user: str, write: bool) -> Path:
        parts = [p for p in raw.split("/") if p]
        if not parts or any(p in (".", "..") for p in parts):
            raise Failure(400, f"invalid path {raw!r}")
        if parts[0] in TOP_VOLUMES:
            if len(parts) < 3:
                raise Failure(400, "a path is {topVolume}/{owner}/{userVolume}/...")
            if parts[1] != user:
                raise Failure(403, f"user {user} has no access to {'/'.join(parts[:3])}")
            vol = self.root / parts[0] / parts[1] / parts[2]
            if not vol.is_dir():
                raise Failure(404, f"user volume {'/'.join(parts[:3])} does not exist")
        elif parts[0] in DATA_VOLUMES:
            if write:
                raise Failure(403, f"data volume {parts[0]} is read-only")
        else:
            raise Failure(404, f"no volume {parts[0]!r}")
        return self.root.joinpath(*parts)

    async def volumes(self, request: Request) -> Response:
        user = self.user(request)
        roots = [
            {
                "name": top,
                "userVolumes": [
                    {"name": v.name, "owner": user, "rootVolumeName": top}
                    for v in sorted((self.root / top / user).iterdir())
                ],
            }
            for top in TOP_VOLUMES
        ]
        return JSONResponse(
            {"rootVolumes": roots, "dataVolumes": [{"name": d} for d in DATA_VOLUMES]}
        )

    async def jsontree(self, request: Request) -> Response:
        target = self.path(request.path_params["path"], self.user(request), False)
        level = int(request.query_params.get("level", "1"))
        if not target.is_dir():
            raise Failure(404, f"folder {request.path_params['path']!r} not found")

        def node(p: Path, depth: int) -> dict[str, Any]:
            st = p.stat()
            out: dict[str, Any] = {
                "name": p.name,
                "lastModified": iso(st.st_mtime),
                "creationTime": iso(st.st_ctime),
                "files": [],
                "folders": [],
            }
            if depth <= 0:
                return out
            for child in sorted(p.iterdir()):
                if child.is_dir():
                    out["folders"].append(node(child, depth - 1))
                else:
                    cst = child.stat()
                    out["files"].append(
                        {
                            "name": child.name,
                            "size": cst.st_size,
                            "lastModified": iso(cst.st_mtime),
                            "creationTime": iso(cst.st_ctime),
                        }
                    )
            return out

        return JSONResponse({"root": node(target, level)})

    async def file(self, request: Request) -> Response:
        user = self.user(request)
        raw = request.path_params["path"]
        if request.method == "PUT":
            target = self.path(raw, user, True)
            quiet = request.query_params.get("quiet", "true") != "false"
            if target.exists() and not quiet:
                raise Failure(500, f"file {raw!r} already exists")
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as fh:  # in place, as the real service does
                try:
                    async for chunk in request.stream():
                        fh.write(chunk)
                except ClientDisconnect:
                    return Response(status_code=400)
            return JSONResponse({})
        target = self.path(raw, user, False)
        if not target.is_file():
            raise Failure(404, f"file {raw!r} not found")
        size = target.stat().st_size
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        if request.method == "HEAD":
            return Response(headers=headers)

        def read() -> Any:
            with open(target, "rb") as fh:
                while block := fh.read(1 << 20):
                    yield block

        return StreamingResponse(read(), headers=headers)  # no Range support

    async def folder(self, request: Request) -> Response:
        self.path(request.path_params["path"], self.user(request), True).mkdir(
            parents=True, exist_ok=True
        )
        return JSONResponse({})

    async def data(self, request: Request) -> Response:
        user = self.user(request)
        raw = request.path_params["path"]
        source = self.path(raw, user, request.method == "DELETE")
        if request.method == "DELETE":
            if source.is_dir():
                shutil.rmtree(source)
            elif source.exists():
                source.unlink()
            else:
                raise Failure(404, f"{raw!r} not found")
            return JSONResponse({})
        if not source.exists():
            raise Failure(404, f"{raw!r} not found")
        body = await request.json()
        if body.get("destinationDataVolume"):
            raise Failure(403, "data volumes are read-only")
        dest_path = "/".join(
            [
                str(body.get("destinationRootVolume", "")),
                str(body.get("destinationOwnerName", "")),
                str(body.get("destinationUserVolume", "")),
                str(body.get("destinationPath", "")).strip("/"),
            ]
        )
        dest = self.path(dest_path, user, True)
        replace = request.query_params.get("replaceExisting", "false") == "true"
        if dest.exists() and not replace:
            raise Failure(500, f"{dest_path!r} already exists")
        dest.parent.mkdir(parents=True, exist_ok=True)
        if request.query_params.get("doCopy", "false") == "true":
            if source.is_dir():
                shutil.copytree(source, dest, dirs_exist_ok=True)
            else:
                shutil.copyfile(source, dest)
        else:
            os.replace(source, dest)
        return JSONResponse({})

    async def volume(self, request: Request) -> Response:
        user = self.user(request)
        p = request.path_params
        if p["root"] not in TOP_VOLUMES or p["owner"] != user:
            raise Failure(403, "you may make user volumes only in your own folders")
        (self.root / p["root"] / p["owner"] / p["name"]).mkdir(parents=True, exist_ok=True)
        return JSONResponse({})

    # -- jobs -----------------------------------------------------------------------------
    def domains(self) -> list[dict[str, Any]]:
        return [
            {
                "name": DOMAIN,
                "apiEndpoint": f"{self.base}/docker/small",
                "images": [{"name": IMAGE, "description": "Python and the usual packages"}],
                "userVolumes": [],
                "volumes": [{"name": d} for d in DATA_VOLUMES],
            }
        ]

    async def computedomains(self, request: Request) -> Response:
        self.user(request)
        return JSONResponse(self.domains())

    async def submit(self, request: Request) -> Response:
        user = self.user(request)
        try:
            body = await request.json()
        except json.JSONDecodeError as exc:
            raise Failure(400, f"the body is not JSON: {exc}") from None
        command = body.get("command")
        if not isinstance(command, str) or not command.strip():
            raise Failure(400, "'command' is required")
        domain = next(
            (d for d in self.domains() if d["apiEndpoint"] == body.get("dockerComputeEndpoint")),
            None,
        )
        if domain is None:
            raise Failure(400, "unknown dockerComputeEndpoint")
        if body.get("dockerImageName") not in [i["name"] for i in domain["images"]]:
            raise Failure(400, f"image {body.get('dockerImageName')!r} is not in the domain")
        results = str(body.get("resultsFolderURI") or "")
        self.path(results, user, True)  # must be the user's own, writable
        with self.lock:
            self.next_id += 1
            job = {
                "id": self.next_id,
                "username": user,
                "submitterDID": body.get("submitterDID", ""),
                "command": command,
                "dockerImageName": body["dockerImageName"],
                "dockerComputeEndpoint": domain["apiEndpoint"],
                "status": PENDING,
                "submissionTime": now_ms(),
                "startTime": None,
                "endTime": None,
                "resultsFolderURI": results,
                "messages": [],
            }
            self.jobs[job["id"]] = job
        return JSONResponse(job)

    def job_of(self, request: Request) -> dict[str, Any]:
        user = self.user(request)
        try:
            job = self.jobs.get(int(request.path_params["id"]))
        except ValueError:
            job = None
        if job is None or job["username"] != user:
            raise Failure(404, f"no job {request.path_params['id']}")
        return job

    async def job(self, request: Request) -> Response:
        return JSONResponse(self.job_of(request))

    async def cancel(self, request: Request) -> Response:
        job = self.job_of(request)
        with self.lock:
            if job["status"] in (PENDING, QUEUED, ACCEPTED):
                self._end(job, CANCELED, "cancelled before it started")
            elif job["status"] == STARTED:
                proc = self.procs.get(job["id"])
                job["cancel"] = True
                if proc is not None:
                    try:
                        os.killpg(proc.pid, signal.SIGTERM)
                    except ProcessLookupError:
                        pass
        return JSONResponse({})

    async def dockerjobs(self, request: Request) -> Response:
        user = self.user(request)
        top = int(request.query_params.get("top", "10"))
        only_open = request.query_params.get("open", "false") == "true"
        mine = [
            j
            for j in sorted(self.jobs.values(), key=lambda j: -j["id"])
            if j["username"] == user and (not only_open or j["status"] < FINISHED)
        ]
        return JSONResponse(mine[:top])

    def _end(self, job: dict[str, Any], status: int, message: str) -> None:
        job["status"] = status
        job["endTime"] = now_ms()
        job["messages"].append({"content": message, "label": "status"})
        self.procs.pop(job["id"], None)

    def _schedule(self) -> None:
        while True:
            time.sleep(0.05)
            with self.lock:
                running = sum(1 for j in self.jobs.values() if j["status"] == STARTED)
                for job in sorted(self.jobs.values(), key=lambda j: j["id"]):
                    if job["status"] == PENDING:
                        job["status"] = QUEUED
                    elif job["status"] == QUEUED:
                        job["status"] = ACCEPTED
                    elif job["status"] == ACCEPTED and running < self.slots:
                        running += 1
                        self._start(job)

    def _start(self, job: dict[str, Any]) -> None:
        results = self.root.joinpath(*[p for p in job["resultsFolderURI"].split("/") if p])
        results.mkdir(parents=True, exist_ok=True)
        work = self.root / ".containers" / str(job["id"])
        work.mkdir(parents=True, exist_ok=True)
        (work / "keystone.token").write_text(  # as in a SciServer container
            next(t for t, u in self.users.items() if u == job["username"])
        )
        env = {"PATH": os.environ.get("PATH", "/bin"), "HOME": str(work), "LANG": "C.UTF-8"}
        out = open(results / "stdout.txt", "wb")  # noqa: SIM115
        err = open(results / "stderr.txt", "wb")  # noqa: SIM115
        try:
            proc = subprocess.Popen(
                ["/bin/sh", "-c", job["command"]],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        except OSError as exc:
            self._end(job, ERROR, f"cannot start: {exc}")
            return
        finally:
            out.close()
            err.close()
        job["status"] = STARTED
        job["startTime"] = now_ms()
        self.procs[job["id"]] = proc
        threading.Thread(target=self._wait, args=(job, proc), daemon=True).start()

    def _wait(self, job: dict[str, Any], proc: subprocess.Popen[bytes]) -> None:
        code = proc.wait()
        with self.lock:
            if job.get("cancel"):
                self._end(job, CANCELED, "cancelled by the user")
            elif code == 0:
                self._end(job, SUCCESS, "the command exited with 0")
            else:
                self._end(job, ERROR, f"the command exited with {code}")

    def stop_all(self) -> None:
        for proc in list(self.procs.values()):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def make_app(standin: StandIn) -> Starlette:
    def guarded(fn: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            try:
                return await fn(request)  # type: ignore[no-any-return]
            except Failure as exc:
                return JSONResponse({"error": exc.message}, status_code=exc.status)

        return endpoint

    s = standin
    fs = "/fileservice/api"
    jobm = "/racm/jobm/rest"
    return Starlette(
        routes=[
            Route(f"{fs}/volumes", guarded(s.volumes)),
            Route(f"{fs}/jsontree/{{path:path}}", guarded(s.jsontree)),
            Route(f"{fs}/file/{{path:path}}", guarded(s.file), methods=["GET", "HEAD", "PUT"]),
            Route(f"{fs}/folder/{{path:path}}", guarded(s.folder), methods=["PUT"]),
            Route(f"{fs}/data/{{path:path}}", guarded(s.data), methods=["PUT", "DELETE"]),
            Route(f"{fs}/volume/{{root}}/{{owner}}/{{name}}", guarded(s.volume), methods=["PUT"]),
            Route(f"{jobm}/computedomains", guarded(s.computedomains)),
            Route(f"{jobm}/jobs/docker", guarded(s.submit), methods=["POST"]),
            Route(f"{jobm}/jobs/{{id}}", guarded(s.job)),
            Route(f"{jobm}/jobs/{{id}}/cancel", guarded(s.cancel), methods=["POST"]),
            Route(f"{jobm}/dockerjobs", guarded(s.dockerjobs)),
        ]
    )


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--user", action="append", default=[], help="NAME:TOKEN (repeat)")
    ap.add_argument("--slots", type=int, default=2, help="jobs running at once")
    a = ap.parse_args()
    users = {tok: name for name, _, tok in (u.partition(":") for u in a.user)}
    standin = StandIn(a.dir, users, a.slots, f"http://127.0.0.1:{a.port}")
    config = uvicorn.Config(make_app(standin), host="127.0.0.1", port=a.port, log_level="warning")
    try:
        asyncio.run(uvicorn.Server(config).serve())  # SIGTERM ends it
    finally:
        standin.stop_all()


if __name__ == "__main__":
    main()
