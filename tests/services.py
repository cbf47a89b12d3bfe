"""Real services for the test session: started on a free loopback port, stopped by PID."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing(what: str) -> None:
    """A prerequisite is missing: fail under CI, skip elsewhere."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{what} is missing and CI=true: run `make services` (make test does)")
    pytest.skip(f"{what} is missing; `make services` installs it")


def wait_port(
    port: int, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listened on port {port} within {timeout}s")


@contextlib.contextmanager
def started(service: Any) -> Iterator[Any]:
    """Run ``service`` for the block, which gets what its ``start()`` returned; stop it after."""
    value = service.start()
    try:
        yield value
    finally:
        service.stop()


def stop_pid(pid: int, timeout: float = 15.0) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # reap it if it is our child (a zombie still answers kill -0)
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Postgres:
    """A throw-away PostgreSQL cluster (initdb + pg_ctl), as user postgres when run as root."""

    def __init__(self) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            missing("PostgreSQL (apt postgresql)")
        self.bin = Path(found[-1]).parent
        self.dir = Path(tempfile.mkdtemp(prefix="fh-pg-"))
        self.port = free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
            self.prefix = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, capture_output=True)

    def start(self) -> str:
        data = self.dir / "data"
        self._run(
            str(self.bin / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"
        )
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(self.dir / "log"),
            "-w",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off",
            "start",
        )
        self.pid = int((data / "postmaster.pid").read_text().split()[0])
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if hasattr(self, "pid"):
            stop_pid(self.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


S3_ACCESS = "forgehubtest"
S3_SECRET = "forgehub-test-secret-key-0123456789"


class CephRGW:
    """A one-host Ceph cluster (1 monitor, 1 memstore OSD) with radosgw: a real S3 server that
    checks request signatures. Data lives in RAM, up to ``memory_mb``; space freed by deletes
    and overwrites comes back once radosgw's garbage collector has run (within seconds here)."""

    def __init__(self, memory_mb: int = 3072) -> None:
        self.memory_mb = memory_mb
        for tool in ("ceph-mon", "ceph-osd", "radosgw", "monmaptool", "radosgw-admin"):
            if shutil.which(tool) is None:
                missing("Ceph RGW (apt radosgw ceph-mon ceph-osd)")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-ceph-"))
        self.port = free_port()
        self.mon_port = free_port()
        self.pids: list[int] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def _conf(self, fsid: str) -> Path:
        d = self.dir
        conf = d / "ceph.conf"
        conf.write_text(f"""[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{self.mon_port}
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr1 = false
auth cluster required = none
auth service required = none
auth client required = none
ms mon client mode = crc
ms client mode = crc
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
mon warn on pool no redundancy = false
osd crush chooseleaf type = 0
osd pool default pg num = 8
osd pool default pgp num = 8
run dir = {d}/run
admin socket = {d}/run/$name.asok
log file = {d}/log/$name.log
[mon.a]
mon data = {d}/mon-a
[osd.0]
osd data = {d}/osd-0
osd objectstore = memstore
memstore device bytes = {self.memory_mb << 20}
[client.rgw.a]
rgw gc obj min wait = 1
rgw gc processor period = 2
rgw frontends = beast endpoint=127.0.0.1:{self.port}
rgw dns name = localhost
""")
        return conf

    def _bg(self, args: list[str], log: str) -> None:
        out = open(self.dir / "log" / log, "wb")  # noqa: SIM115
        p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        self.procs.append(p)
        self.pids.append(p.pid)

    def start(self) -> str:
        import uuid

        for sub in ("mon-a", "osd-0", "run", "log"):
            (self.dir / sub).mkdir()
        fsid = str(uuid.uuid4())
        c = ["-c", str(self._conf(fsid))]
        run = lambda *a: subprocess.run(list(a), check=True, capture_output=True)  # noqa: E731
        run(
            "monmaptool",
            "--create",
            "--fsid",
            fsid,
            "--addv",
            "a",
            f"[v2:127.0.0.1:{self.mon_port}]",
            str(self.dir / "monmap"),
        )
        run("ceph-mon", "--mkfs", "-i", "a", "--monmap", str(self.dir / "monmap"), *c)
        self._bg(["ceph-mon", "-i", "a", *c, "-f"], "mon.out")
        run("ceph", *c, "osd", "create")
        run("ceph-osd", "-i", "0", "--mkfs", *c)
        run(
            "ceph",
            *c,
            "osd",
            "crush",
            "add",
            "osd.0",
            "1.0",
            f"host={socket.gethostname()}",
            "root=default",
        )
        self._bg(["ceph-osd", "-i", "0", *c, "-f"], "osd.out")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            r = subprocess.run(["ceph", *c, "osd", "stat"], capture_output=True, text=True)
            if "1 up" in r.stdout:
                break
            time.sleep(0.3)
        self.rgw_args = ["radosgw", *c, "-n", "client.rgw.a", "-f"]
        self.start_gateway()
        run(
            "radosgw-admin",
            *c,
            "-n",
            "client.rgw.a",
            "user",
            "create",
            "--uid=forgehub",
            "--display-name=forgehub",
            f"--access-key={S3_ACCESS}",
            f"--secret-key={S3_SECRET}",
        )
        return f"http://127.0.0.1:{self.port}"

    def start_gateway(self) -> None:
        """(Re)start radosgw alone; the monitor and the OSD keep the data."""
        self._bg(self.rgw_args, "rgw.out")
        self.gateway = self.procs[-1]
        wait_port(self.port, 90)

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


WEBDAV_USER = "alice"
WEBDAV_PASSWORD = "webdav-secret"


class WsgiDAV:
    """A real WebDAV server (wsgidav + cheroot) with basic auth, on a folder."""

    def __init__(self) -> None:
        import sys

        self.exe = Path(sys.executable).parent / "wsgidav"
        if not self.exe.exists():
            missing("wsgidav (pip install wsgidav cheroot)")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-dav-"))
        (self.dir / "root").mkdir()
        self.port = free_port()

    def start(self) -> str:
        cfg = self.dir / "wsgidav.yaml"
        cfg.write_text(f"""host: 127.0.0.1
port: {self.port}
server: cheroot
provider_mapping:
  "/dav": "{self.dir / "root"}"
http_authenticator:
  domain_controller: null
  accept_basic: true
  accept_digest: false
  default_to_digest: false
simple_dc:
  user_mapping:
    "*":
      "{WEBDAV_USER}":
        password: "{WEBDAV_PASSWORD}"
verbose: 1
logging:
  enable_loggers: []
""")
        log = open(self.dir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.exe), "--config", str(cfg)], stdout=log, stderr=subprocess.STDOUT
        )
        wait_port(self.port, 30, self.proc)
        return f"http://127.0.0.1:{self.port}/dav"

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


class ForgehubServer:
    """`forgehub serve` in a subprocess, on a free port, with its own data directory."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        """``args``: more ``forgehub serve`` options (``--workers 2``)."""
        self.data_dir = data_dir
        self.port = free_port()
        self.args = args
        self.env = env

    def start(self) -> str:
        import sys

        env = {**os.environ, "FORGEHUB_DATA_DIR": str(self.data_dir), **self.env}
        env.pop("FORGEHUB_CONFIG", None)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log = open(self.data_dir / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forgehub.cli", "serve", "--port", str(self.port), *self.args],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, 60, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    def stop(self, keep_runners: bool = False) -> None:
        """Stop the server and, unless ``keep_runners`` (a restart), the runners its ``local``
        compute started: they outlive a server on purpose (a restart finds them), so a test
        ends them itself; each takes its service down with it."""
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)
            self.log.close()
            if not keep_runners:  # with no server to report to they would wait: SIGKILL
                pids = self.runners()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                deadline = time.monotonic() + 10
                while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
                    time.sleep(0.05)

    def runners(self) -> list[int]:
        """PIDs of the job runners started for this server (they name its URL)."""
        mark = b"forgehub.jobs.runner\0--server\0" + self.url.encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if mark in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found


@contextlib.contextmanager
def module_server(data_dir: Path, *args: str) -> Iterator[int]:
    """`forgehub module serve ARGS` in a subprocess on a free port (log: data_dir/server.log);
    yields the port once it listens, stops the server by PID afterwards."""
    import sys

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "FORGEHUB_DATA_DIR": str(data_dir), "PYTHONPATH": str(root)}
    with open(data_dir / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "forgehub"),
                "module",
                "serve",
                *args,
                "--port",
                str(port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_port(port, 60, proc)
            yield port
        finally:
            stop_pid(proc.pid)


class Slurm:
    """slurmctld + slurmd on this host (auth/none, loopback only), with their own state dirs.

    ``gpus=N`` SIMULATES N GPUs of type ``fake``: a GRES whose device files are character
    devices made in the state directory with the numbers of /dev/null (no GPU exists here);
    Slurm counts, assigns and schedules them and sets CUDA_VISIBLE_DEVICES in the job."""

    def __init__(self, gpus: int = 0) -> None:
        self.gpus = gpus
        if not (shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sbatch")):
            missing("Slurm (apt slurm-wlm slurm-client)")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-slurm-"))
        self.host = socket.gethostname()
        self.conf = self.dir / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> str:
        ctld, slurmd = free_port(), free_port()
        for d in ("state", "spool", "log", "run"):
            (self.dir / d).mkdir()
        cpus = os.cpu_count() or 2
        gres = ""
        if self.gpus:
            for i in range(self.gpus):  # slurmd wants a character device: /dev/null's numbers
                os.mknod(self.dir / f"fakegpu{i}", stat.S_IFCHR | 0o600, os.makedev(1, 3))
            files = f"{self.dir}/fakegpu[0-{self.gpus - 1}]"
            (self.dir / "gres.conf").write_text(
                f"AutoDetect=off\nNodeName={self.host} Name=gpu Type=fake File={files}\n"
            )
            gres = f" Gres=gpu:fake:{self.gpus}"
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=forgehubtest",
                    f"SlurmctldHost={self.host}(127.0.0.1)",
                    f"SlurmctldPort={ctld}",
                    f"SlurmdPort={slurmd}",
                    "SlurmUser=root",
                    "AuthType=auth/none",
                    "CredType=cred/none",
                    "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SchedulerType=sched/backfill",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core_Memory",
                    "ReturnToService=2",
                    "MinJobAge=600",
                    "KillWait=2",
                    f"StateSaveLocation={self.dir}/state",
                    f"SlurmdSpoolDir={self.dir}/spool",
                    f"SlurmctldPidFile={self.dir}/run/slurmctld.pid",
                    f"SlurmdPidFile={self.dir}/run/slurmd.pid",
                    f"SlurmctldLogFile={self.dir}/log/slurmctld.log",
                    f"SlurmdLogFile={self.dir}/log/slurmd.log",
                    "JobAcctGatherType=jobacct_gather/none",
                    *(["GresTypes=gpu"] if self.gpus else []),
                    f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 "
                    f"State=UNKNOWN{gres}",
                    f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for argv in (
            ["slurmctld", "-D", "-i", "-f", str(self.conf)],
            ["slurmd", "-D", "-f", str(self.conf)],
        ):
            log = open(self.dir / "log" / f"{argv[0]}.out", "wb")  # noqa: SIM115
            self.procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            r = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() in ("idle", "mix", "alloc"):
                return str(self.conf)
            time.sleep(0.3)
        raise RuntimeError(f"slurm did not come up: {r.stdout} {r.stderr}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            stop_pid(p.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class RayHead:
    """A local Ray head (loopback only) with its dashboard's Jobs API."""

    def __init__(self) -> None:
        import sys

        self.ray = Path(sys.executable).parent / "ray"
        if not self.ray.exists():
            missing("Ray (pip install 'ray[default]')")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-ray-"))
        self.env = {
            **os.environ,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }

    def start(self) -> str:
        self.port, self.dash = free_port(), free_port()
        subprocess.run(
            [
                str(self.ray),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                "--num-cpus=2",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dash}",
                "--disable-usage-stats",
                f"--temp-dir={self.dir}",
                "--include-dashboard=true",
            ],
            env=self.env,
            check=True,
            capture_output=True,
        )
        wait_port(self.dash, 60)
        return f"http://127.0.0.1:{self.dash}"

    def pids(self) -> list[int]:
        """This head's processes: those whose command line names its own temp dir."""
        mine = str(self.dir).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if mine in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def stop(self) -> None:
        # never `ray stop --force`: it stops every Ray process on the machine, others' too
        pids = self.pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.2)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class SSHD:
    """An OpenSSH server on loopback that accepts one generated key (a "login node")."""

    def __init__(self) -> None:
        if not (Path("/usr/sbin/sshd").exists() and shutil.which("ssh-keygen")):
            missing("OpenSSH (apt openssh-server openssh-client)")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-sshd-"))
        os.chmod(self.dir, 0o700)

    def start(self) -> tuple[int, str, str]:
        """Returns (port, private key, known_hosts line)."""
        import getpass

        d = self.dir
        for name in ("host", "client"):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / name)], check=True
            )
        (d / "authorized_keys").write_text((d / "client.pub").read_text())
        os.chmod(d / "authorized_keys", 0o600)
        Path("/run/sshd").mkdir(exist_ok=True)
        self.port = free_port()
        (d / "sshd_config").write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n"
            f"AuthorizedKeysFile {d}/authorized_keys\nPasswordAuthentication no\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\n"
            f"PidFile {d}/sshd.pid\nAcceptEnv none\n"
        )
        self.proc = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
            stdout=open(d / "sshd.log", "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, 15, self.proc)
        host_pub = (d / "host.pub").read_text().split()
        known = f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}"
        self.user = getpass.getuser()
        return self.port, (d / "client").read_text(), known

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


OIDC_DIR = Path(__file__).resolve().parent / "oidc"
OIDC_WEB = ("forgehub-web", "web-secret-for-tests")
OIDC_CLI = "forgehub-cli"
OIDC_AUDIENCE = "forgehub-api"


def rsa_jwk(kid: str) -> dict[str, Any]:
    """A new RSA signing key as a private JWK (the provider's; tests may sign with it too)."""
    import json as _json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk: dict[str, Any] = _json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


class OidcProvider:
    """A real OpenID Provider: the `oidc-provider` package (npm) run by Node, with forgehub's
    dashboard client (confidential, code flow + PKCE), its CLI client (public, device flow,
    JWT access tokens for forgehub's API) and ``users`` (sub → claims, groups included)."""

    def __init__(
        self,
        users: dict[str, dict[str, Any]],
        redirect_uris: list[str],
        keys: list[dict[str, Any]] | None = None,
        access_token_ttl: int = 600,
    ) -> None:
        self.node = shutil.which("node")
        if self.node is None or not (OIDC_DIR / "node_modules" / "oidc-provider").exists():
            missing("the OpenID provider (node and tests/oidc/node_modules: `make services`)")
        self.dir = Path(tempfile.mkdtemp(prefix="fh-oidc-"))
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.keys = keys or [rsa_jwk("k1")]
        self.users = users
        self.redirect_uris = redirect_uris
        self.access_token_ttl = access_token_ttl

    def config(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "port": self.port,
            "jwks": {"keys": self.keys},
            "users": self.users,
            "audience": OIDC_AUDIENCE,
            "api_resource": "https://forgehub.test/api",
            "api_clients": [OIDC_CLI],
            "access_token_ttl": self.access_token_ttl,
            "clients": [
                {
                    "client_id": OIDC_WEB[0],
                    "client_secret": OIDC_WEB[1],
                    "redirect_uris": self.redirect_uris,
                    "grant_types": ["authorization_code", "refresh_token"],
                    "response_types": ["code"],
                },
                {
                    "client_id": OIDC_CLI,
                    "token_endpoint_auth_method": "none",
                    "grant_types": [
                        "urn:ietf:params:oauth:grant-type:device_code",
                        "refresh_token",
                    ],
                    "response_types": [],
                    "redirect_uris": [],
                },
            ],
        }

    def start(self) -> str:
        import json as _json

        cfg = self.dir / "config.json"
        cfg.write_text(_json.dumps(self.config()))
        cfg.chmod(0o600)
        self.log = open(self.dir / "log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.node), str(OIDC_DIR / "provider.mjs"), str(cfg)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=OIDC_DIR,
        )
        wait_port(self.port, 30, self.proc)
        return self.issuer

    def restart(self, keys: list[dict[str, Any]]) -> None:
        """Stop and start again with these signing keys (the first signs): a key rotation."""
        stop_pid(self.proc.pid)
        self.log.close()
        self.keys = keys
        self.start()

    def provider_config(self, **extra: Any) -> dict[str, Any]:
        """forgehub's ``oidc`` entry for this provider."""
        return {
            "name": "testid",
            "issuer": self.issuer,
            "client_id": OIDC_WEB[0],
            "client_secret": OIDC_WEB[1],
            "cli_client_id": OIDC_CLI,
            "audience": [OIDC_AUDIENCE, OIDC_WEB[0]],
            "scopes": "openid profile email groups",
            "cli_scopes": "openid profile email groups offline_access",
            **extra,
        }

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


SCISERVER_USERS = {"alice": "sciserver-token-alice", "bob": "sciserver-token-bob"}


class SciServerStandIn:
    """The SciServer STAND-IN of ``tests/sciserver_standin.py`` (not SciServer, which cannot run
    here): its Files service and JOBM, on a free port, with users alice and bob."""

    def __init__(self, slots: int = 2) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fh-sciserver-"))
        self.port = free_port()
        self.slots = slots

    def start(self) -> str:
        import sys

        argv = [sys.executable, "-m", "tests.sciserver_standin", "--port", str(self.port)]
        argv += ["--dir", str(self.dir / "root"), "--slots", str(self.slots)]
        for name, token in SCISERVER_USERS.items():
            argv += ["--user", f"{name}:{token}"]
        root = Path(__file__).resolve().parent.parent
        log = open(self.dir / "log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(argv, cwd=root, stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, 30, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)
        shutil.rmtree(self.dir, ignore_errors=True)


class Nginx:
    """A real nginx on a free loopback port, in front of forgehub servers, with the
    configuration ``forgehub config nginx`` prints (included, as an operator would)."""

    def __init__(self, upstreams: list[str]) -> None:
        if not Path("/usr/sbin/nginx").exists():
            missing("nginx (apt nginx-light)")
        self.upstreams = upstreams
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fh-nginx-"))

    def start(self) -> str:
        import sys

        site = subprocess.run(
            [sys.executable, "-m", "forgehub.cli", "config", "nginx", "--listen",
             f"127.0.0.1:{self.port}", *[a for u in self.upstreams for a in ("--upstream", u)]],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        (self.dir / "forgehub.conf").write_text(site)
        d = self.dir
        (d / "nginx.conf").write_text(
            f"""daemon off;
user root;
worker_processes 2;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    include {d}/forgehub.conf;
}}
"""
        )
        self.log = open(d / "nginx.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["/usr/sbin/nginx", "-p", str(d), "-c", str(d / "nginx.conf")],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port, 15, self.proc)
        self.url = f"http://127.0.0.1:{self.port}"
        return self.url

    def stop(self) -> None:
        if hasattr(self, "proc"):
            stop_pid(self.proc.pid)  # SIGTERM: the master stops its workers
            self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


class Cluster:
    """Several ``forgehub serve`` on one PostgreSQL database, behind a real nginx, sharing a
    folder (the blob server) and, when given, an S3 bucket as the default store."""

    def __init__(
        self, root: Path, db_url: str, n: int = 3, default_storage: str = "", **env: str
    ) -> None:
        from cryptography.fernet import Fernet

        self.root = root
        self.ports = [free_port() for _ in range(n)]
        self.nginx = Nginx([f"127.0.0.1:{p}" for p in self.ports])
        shared = root / "shared"
        self.env = {
            "FORGEHUB_DATABASE_URL": db_url,
            "FORGEHUB_CLUSTER": "true",
            "FORGEHUB_SHARED_DIR": str(shared),
            "FORGEHUB_PUBLIC_URL": f"http://127.0.0.1:{self.nginx.port}",
            "FORGEHUB_SECRET_KEYS": Fernet.generate_key().decode(),
            "FORGEHUB_JOB_LEASE_S": "6",
            **({"FORGEHUB_DEFAULT_STORAGE": default_storage} if default_storage else {}),
            **env,
        }
        self.servers = [ForgehubServer(root / f"server{i}", **self.env) for i in range(n)]
        for srv, port in zip(self.servers, self.ports, strict=True):
            srv.port = port

    def start(self) -> str:
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(len(self.servers)) as pool:
            list(pool.map(lambda s: s.start(), self.servers))  # at once: they wait in turn
        self.url = self.nginx.start()
        return self.url

    @property
    def admin_token(self) -> str:
        for srv in self.servers:  # the first to start made the admin
            f = srv.data_dir / "admin.token"
            if f.exists():
                return f.read_text().strip()
        raise RuntimeError("no server wrote an admin token")

    def kill(self, i: int) -> None:
        """``kill -9`` server ``i`` (its runners live on, as after a crash)."""
        srv = self.servers[i]
        os.kill(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        srv.log.close()

    def restart(self, i: int) -> None:
        """Stop server ``i`` gracefully (SIGTERM) and start it again on its port."""
        srv = self.servers[i]
        srv.stop(keep_runners=True)
        srv.start()

    def runners(self) -> list[int]:
        url = self.env["FORGEHUB_PUBLIC_URL"]
        mark = b"forgehub.jobs.runner\0--server\0" + url.encode() + b"\0"
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError):
                    if mark in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
        return found

    def stop(self) -> None:
        self.nginx.stop()
        for srv in self.servers:
            if hasattr(srv, "proc") and srv.proc.poll() is None:
                srv.stop(keep_runners=True)
        for pid in self.runners():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
