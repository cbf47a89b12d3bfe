"""Modules a scientist would bring, built in the test: a package folder, a git repository
served by a real ``git daemon``, and a local index of a dependency in two versions (so two
modules can pin it differently)."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import textwrap
import zipfile
from pathlib import Path

from tests.services import free_port, stop_pid, wait_port

PINNED = "pinned-dep"


def pinned_wheels(dest: Path) -> Path:
    """``pinned-dep`` 1.0 and 2.0 as wheels in ``dest`` (a find-links folder for uv)."""
    dest.mkdir(parents=True, exist_ok=True)
    for version in ("1.0", "2.0"):
        files = {
            "pinned_dep/__init__.py": f'VERSION = "{version}"\n',
            f"pinned_dep-{version}.dist-info/METADATA": (
                f"Metadata-Version: 2.1\nName: pinned-dep\nVersion: {version}\n"
            ),
            f"pinned_dep-{version}.dist-info/WHEEL": (
                "Wheel-Version: 1.0\nGenerator: forgehub-tests\nRoot-Is-Purelib: true\n"
                "Tag: py3-none-any\n"
            ),
        }
        record = f"pinned_dep-{version}.dist-info/RECORD"
        lines = []
        for name, text in files.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
            lines.append(f"{name},sha256={digest.rstrip(b'=').decode()},{len(text.encode())}")
        files[record] = "\n".join([*lines, f"{record},,"]) + "\n"
        with zipfile.ZipFile(dest / f"pinned_dep-{version}-py3-none-any.whl", "w") as zf:
            for name, text in files.items():
                zf.writestr(name, text)
    return dest


MODULE = '''
"""A module as a scientist writes it: its own dependencies, weights it can train and load."""
from pathlib import Path

import pinned_dep
import pydantic
from pydantic import BaseModel

from forgehub.module import File, Module


class PredictArgs(BaseModel):
    data: File


class TrainArgs(BaseModel):
    label: str = "trained"
    seconds: float = 0.0  # to hold a training open while another runs


class Model(Module):
    name = "{name}"
    metadata = {{"title": "{name}", "summary": "A module from its own source"}}
    PredictArgs = PredictArgs
    TrainArgs = TrainArgs
    label = "shipped"

    def load(self, path: Path) -> None:
        self.label = (path / "label.txt" if path.is_dir() else path).read_text()

    def predict(self, args: PredictArgs) -> dict:
        return {{
            "label": self.label,
            "pinned": pinned_dep.VERSION,
            "pydantic": pydantic.VERSION,
            "bytes": len(args.data.read_bytes()),
        }}

    def train(self, args: TrainArgs, ctx) -> dict:
        import time

        time.sleep(args.seconds)
        ctx.log_metric("loss", 0.25, 1)
        (ctx.output_dir / "label.txt").write_text(args.label)
        return {{"label": args.label, "pinned": pinned_dep.VERSION}}
'''


def module_folder(dest: Path, name: str, pin: str = "1.0") -> Path:
    """A native module's package folder: pyproject.toml (setuptools) and its code."""
    pkg = name.replace("-", "_")
    (dest / pkg).mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.1.0"
            dependencies = ["pydantic>=2", "{PINNED}=={pin}"]

            [project.entry-points."forgehub.modules"]
            {name} = "{pkg}:Model"

            [tool.setuptools]
            packages = ["{pkg}"]
            """
        )
    )
    (dest / pkg / "__init__.py").write_text(MODULE.format(name=name))
    return dest


def git(folder: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Ada",
        "GIT_AUTHOR_EMAIL": "ada@example.org",
        "GIT_COMMITTER_NAME": "Ada",
        "GIT_COMMITTER_EMAIL": "ada@example.org",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(folder),
    }
    out = subprocess.run(
        ["git", "-C", str(folder), *args], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def git_repo(folder: Path, tag: str = "v1") -> str:
    """``folder`` as a git repository with one commit, tagged; its commit."""
    git(folder, "init", "-q", "-b", "main")
    git(folder, "add", "-A")
    git(folder, "commit", "-q", "-m", "first version")
    git(folder, "tag", "-a", tag, "-m", tag)
    return git(folder, "rev-parse", "HEAD")


class GitDaemon:
    """``git daemon`` serving the repositories under ``base`` (read-only) on a free port."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()

    def start(self) -> str:
        self.proc = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                "--export-all",
                f"--base-path={self.base}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port, 15, self.proc)
        return f"git://127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_pid(self.proc.pid)


DEEPAAS_MODULE = '''
"""A DEEPaaS-style module: webargs fields, get_metadata/predict/train, its weights by an
environment variable. It pins an old marshmallow and webargs 5, as DEEPaaS modules do."""
import os
from pathlib import Path

import marshmallow
import pinned_dep
from webargs import fields

WEIGHTS = "SEEDLING_WEIGHTS"


def get_metadata():
    return {{
        "name": "{name}",
        "description": "A DEEPaaS module from a wheel",
        "weights": {{"env": WEIGHTS}},
    }}


def get_predict_args():
    return {{"data": fields.Raw(metadata={{"type": "file", "location": "form"}}, required=True)}}


def get_train_args():
    return {{"label": fields.Str(load_default="trained")}}


def _label():
    path = os.environ.get(WEIGHTS)
    if not path:
        return "shipped"
    p = Path(path)
    return (p / "label.txt" if p.is_dir() else p).read_text()


def predict(**kwargs):
    with open(kwargs["data"].filename, "rb") as fh:
        size = len(fh.read())
    return {{
        "label": _label(),
        "pinned": pinned_dep.VERSION,
        "marshmallow": marshmallow.__version__,
        "bytes": size,
    }}


def train(**kwargs):
    out = Path(os.environ["FORGEHUB_OUTPUT_DIR"])
    (out / "label.txt").write_text(kwargs["label"])
    return {{"label": kwargs["label"], "pinned": pinned_dep.VERSION}}
'''


def deepaas_folder(dest: Path, name: str, pin: str = "2.0") -> Path:
    """A DEEPaaS-style module's package folder (entry point ``deepaas.v2.model``)."""
    pkg = name.replace("-", "_")
    (dest / pkg).mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{name}"
            version = "0.2.0"
            dependencies = ["webargs==5.5.3", "marshmallow==3.19.0", "{PINNED}=={pin}"]

            [project.entry-points."deepaas.v2.model"]
            {name} = "{pkg}"

            [tool.setuptools]
            packages = ["{pkg}"]
            """
        )
    )
    (dest / pkg / "__init__.py").write_text(DEEPAAS_MODULE.format(name=name))
    return dest


SNOOP = '''
"""A hostile module: what can it reach from the server's machine?"""
import os
import socket

from forgehub.module import Module


def _try(fn):
    try:
        return "allowed: " + str(fn())[:40]
    except Exception as exc:  # noqa: BLE001
        return "stopped: " + type(exc).__name__


class Model(Module):
    name = "snoop"

    def predict(self, args) -> dict:
        target, port = {target!r}, {port}
        return {{
            "read_data_dir": _try(lambda: open(target).read()),
            "write_data_dir": _try(lambda: open({target!r} + ".pwned", "w").write("x")),
            "write_beside": _try(lambda: open(os.path.expanduser("~/../pwned"), "w").write("x")),
            "connect": _try(lambda: socket.create_connection(("127.0.0.1", port), 2)),
            "env": sorted(k for k in os.environ if "TOKEN" in k or "SECRET" in k),
        }}
'''


def snoop_folder(dest: Path, target: Path, port: int) -> Path:
    """A module that tries to read ``target``, write outside its folder, reach ``port``."""
    (dest / "snoop").mkdir(parents=True, exist_ok=True)
    (dest / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [build-system]
            requires = ["setuptools>=61"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "snoop"
            version = "0.1.0"
            dependencies = ["pydantic>=2"]

            [project.entry-points."forgehub.modules"]
            snoop = "snoop:Model"

            [tool.setuptools]
            packages = ["snoop"]
            """
        )
    )
    (dest / "snoop" / "__init__.py").write_text(SNOOP.format(target=str(target), port=port))
    return dest
