"""``forgehub module``: list, serve, and run modules without HTTP."""

from __future__ import annotations

import json
import mimetypes
import shutil
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from forgehub.cli.messages import Console, Table, fail

app = typer.Typer(
    rich_markup_mode=None,
    help="List, serve and run modules (native and DEEPaaS).",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
EXTRA = {"allow_extra_args": True, "ignore_unknown_options": True}


def _load(name: str) -> Any:
    from forgehub.module import ModuleNotFound, load

    try:
        return load(name)
    except ModuleNotFound as exc:
        fail(str(exc))
    except Exception as exc:  # noqa: BLE001 - a broken module is reported, not a traceback
        fail(f"cannot load module {name!r}: {type(exc).__name__}: {exc}")


@app.command("ls")
def ls(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List installed modules (entry points forgehub.modules and deepaas.v2.model)."""
    from forgehub.module import discover

    refs = sorted(discover().values(), key=lambda r: r.name)
    if as_json:
        out.print_json(
            json.dumps(
                [
                    {
                        "name": r.name,
                        "target": r.target,
                        "kind": "deepaas" if r.group.startswith("deepaas") else "native",
                    }
                    for r in refs
                ]
            )
        )
        return
    table = Table("name", "kind", "target")
    for r in refs:
        table.add_row(r.name, "deepaas" if r.group.startswith("deepaas") else "native", r.target)
    out.print(table)


@app.command("show")
def show(name: str = typer.Argument(..., help="Module name or package.module[:attr].")) -> None:
    """Show a module's metadata and argument schemas (JSON Schema)."""
    out.print_json(json.dumps(_load(name).describe()))


@app.command("serve")
def serve(
    name: list[str] = typer.Argument(
        None,
        help="Module names or package.module[:attr] paths; none serves every installed module. "
        "Or one module's source (git+URL@ref, pip:REQUIREMENT, a wheel file): served from its "
        "own environment.",
    ),
    weights: Path = typer.Option(
        None, "--weights", help="Trained weights (a file or folder) for the one module served."
    ),
    lock: Path = typer.Option(None, "--lock", hidden=True, help="A source's environment lock."),
    host: str = typer.Option("127.0.0.1", help="Bind address."),
    port: int = typer.Option(5000, help="Port."),
    workers: int = typer.Option(
        1,
        help="Server processes sharing the port; each loads the modules and calls warm() "
        "once. Predictions never run on the event loop.",
    ),
    base_path: str = typer.Option("", help="Serve under this path prefix (behind a proxy)."),
    max_upload: int = typer.Option(100, "--max-upload", help="Largest request body, in MB."),
    max_trainings: int = typer.Option(
        2, "--max-trainings", min=1, help="Trainings running at once per process; more queue."
    ),
    data_dir: Path = typer.Option(
        None, "--data-dir", help="Where trainings are kept [default: forgehub data dir]."
    ),
    allow_public: bool = typer.Option(
        False,
        "--allow-public",
        help="Allow a non-loopback --host (the model API has no authentication, like deepaas-run).",
    ),
    log_level: str = typer.Option("info", help="debug, info, warning, error."),
    model_name: str = typer.Option(
        "",
        "--model-name",
        envvar="DEEPAAS_V2_MODEL",
        help="With no NAME: serve only the installed module of this name, as deepaas-run "
        "does. With one NAME (an import path, say): the name to serve it under. "
        "[env: DEEPAAS_V2_MODEL]",
    ),
    no_train: bool = typer.Option(
        False,
        "--no-train",
        help="Answer 402 on the train endpoints (deepaas-run --notrain-endpoint).",
    ),
    no_predict: bool = typer.Option(
        False,
        "--no-predict",
        help="Answer 402 on the predict endpoints (deepaas-run --nopredict-endpoint).",
    ),
    no_doc: bool = typer.Option(
        False, "--no-doc", help="No Swagger UI at /api and /docs; /swagger.json stays."
    ),
    batch_size: int = typer.Option(
        None,
        "--batch-size",
        min=0,
        help="A module with predict_batch: group up to this many concurrent requests "
        "[its own batch_max_size]; 0 turns batching off.",
    ),
    batch_wait_ms: float = typer.Option(
        None,
        "--batch-wait-ms",
        min=0,
        help="How long a batch's first request waits for more [its own batch_wait_ms].",
    ),
) -> None:
    """Serve modules through the DEEPaaS v2 model API (the `deepaas-run` equivalent).

    DEEPaaS v2 routes under /v2, /swagger.json (Swagger 2.0, as DEEPaaS), OpenAPI 3 at
    /openapi.json, Swagger UI at /api, forgehub's training views under /api/v1."""
    import uvicorn

    from forgehub.config import LOOPBACK_HOSTS, load_settings
    from forgehub.modelapi import create_model_app
    from forgehub.module import load_all
    from forgehub.server.accesslog import setup
    from forgehub.server.gcfreeze import freeze_after_startup

    if host not in LOOPBACK_HOSTS and not allow_public:
        fail(
            f"refusing to listen on {host}: the model API has no authentication; "
            "pass --allow-public if that is what you want"
        )
    if workers < 1:
        fail("--workers must be 1 or more")
    if model_name and len(name or []) > 1:
        fail("--model-name names one module; give at most one NAME with it")
    hosted = _hosted(name[0], model_name, weights, lock) if name and len(name) == 1 else None
    if hosted is not None:
        if workers > 1:
            hosted.close()
            fail("a module from its source is served by one process (its own runs beside it)")
        modules = [hosted]
    elif name:
        modules = [_load(n) for n in name]
        if model_name:
            modules[0].name = model_name
    elif model_name:
        modules = [_load(model_name)]
    else:
        modules = load_all()
    if not modules:
        fail("no modules installed; name one (package.module[:attr])")
    if weights is not None and hosted is None:
        if len(modules) != 1:
            fail("--weights goes with one module")
        if not weights.exists():
            fail(f"{weights} does not exist")
        try:
            modules[0].load_weights(weights.resolve())
        except Exception as exc:  # noqa: BLE001 - ModuleError: the module cannot
            fail(f"cannot load {weights}: {exc}")
    settings = load_settings(overrides={"data_dir": data_dir})
    setup(log_level)
    work_dir = settings.data_dir / "modelapi"
    common = dict(
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    prefix = "/" + base_path.strip("/") if base_path.strip("/") else ""
    out.print(
        f"serving {', '.join(m.name for m in modules)} on http://{host}:{port}{prefix}/  "
        f"(docs: {prefix}/docs)"
    )
    options: dict[str, Any] = {
        "base_path": base_path,
        "max_upload_mb": max_upload,
        "max_trainings": max_trainings,
        "enable_train": not no_train,
        "enable_predict": not no_predict,
        "enable_doc": not no_doc,
        "batch_size": batch_size,
        "batch_wait_ms": batch_wait_ms,
    }
    if workers <= 1:
        app_ = freeze_after_startup(create_model_app(modules, settings.db_url, work_dir, **options))
        uvicorn.run(app_, **common)  # type: ignore[arg-type]
        return
    # N processes on one socket: migrate and recover once here, then let each process load
    # the modules and warm them once.
    import os

    from forgehub.db import Database, upgrade
    from forgehub.modelapi.factory import ENV, spec_to_env
    from forgehub.modelapi.trainings import TrainingManager

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings.db_url)
    db = Database(settings.db_url)
    TrainingManager(db, {m.name: m for m in modules}, work_dir).recover()
    from forgehub.modelapi.standalone import _local_owner

    _local_owner(db)  # once here, before N processes race to create it
    db.dispose()
    import gc

    gc.enable()  # this process only supervises the servers (see forgehub.cli.entry)
    os.environ[ENV] = spec_to_env(
        [(m.name, m.target) for m in modules], settings.db_url, work_dir, **options
    )
    uvicorn.run("forgehub.modelapi.factory:app_from_env", factory=True, workers=workers, **common)  # type: ignore[arg-type]


def _parse_pairs(pairs: list[str], what: str) -> list[tuple[str, str]]:
    parsed = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"{what} expects NAME=VALUE, got {pair!r}")
        parsed.append((key.strip(), value))
    return parsed


def _extra_pairs(extra: list[str]) -> list[tuple[str, str]]:
    """``--top-k 3`` / ``--top_k=3`` style options left over by click."""
    pairs = []
    i = 0
    while i < len(extra):
        tok = extra[i]
        if not tok.startswith("--"):
            fail(f"unexpected argument {tok!r}; use --NAME VALUE or --arg NAME=VALUE")
        key, sep, value = tok[2:].partition("=")
        if not sep:
            if i + 1 >= len(extra):
                fail(f"option --{key} needs a value")
            value = extra[i + 1]
            i += 1
        pairs.append((key, value))
        i += 1
    return pairs


def _gather(
    module: Any, specs: list[Any], args: list[str], files: list[str], extra: list[str]
) -> Any:
    """Argument values from ``--arg NAME=VALUE``, ``--file NAME=PATH`` and deepaas-cli's own
    ``--NAME VALUE`` (where a file argument's value is the path of the file to send)."""
    from forgehub.module.args import ArgErrors, FlatSource, collect
    from forgehub.module.contract import UploadedFile

    by_name = {s.name: s for s in specs}
    values: dict[str, list[Any]] = {}

    def known(key: str) -> str:
        key = key if key in by_name else key.replace("-", "_")
        if key not in by_name:
            fail(
                f"module {module.name!r} has no argument {key!r} "
                f"(arguments: {', '.join(sorted(by_name)) or 'none'})"
            )
        return key

    def add_file(key: str, value: str, how: str) -> None:
        path = Path(value).expanduser()
        if not path.is_file():
            fail(f"{how}: {path} is not a file")
        ctype = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        values.setdefault(key, []).append(UploadedFile(key, str(path.resolve()), ctype, path.name))

    for key, value in _parse_pairs(args, "--arg"):
        values.setdefault(known(key), []).append(value)
    for key, value in _extra_pairs(extra):
        key = known(key)
        spec = by_name[key]
        if spec.is_file or spec.items == "file":
            add_file(key, value, f"--{key}")  # deepaas-cli: --demo_image PATH
        else:
            values.setdefault(key, []).append(value)
    for key, value in _parse_pairs(files, "--file"):
        add_file(known(key), value, f"--file {key}")
    data = collect(specs, FlatSource(values))
    return data, ArgErrors


@app.command("predict", context_settings=EXTRA)
def predict(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Module name or package.module[:attr]."),
    arg: list[str] = typer.Option([], "--arg", "-a", help="NAME=VALUE (repeat for lists)."),
    file: list[str] = typer.Option([], "--file", "-f", help="FIELD=PATH to upload."),
    output: Path = typer.Option(None, "-o", "--output", help="Write the result here."),
) -> None:
    """Predict without a server: calls warm(), then predict.

    deepaas-cli's syntax works too: --NAME VALUE for any argument (--top-k 3 or --top_k 3),
    and --NAME PATH sends that file for a file argument (--demo_image cat.png). A binary
    result goes to -o FILE (or a pipe)."""
    from forgehub.module import ModuleError

    module = _load(name)
    data, arg_errors = _gather(module, module.predict_specs, arg, file, list(ctx.args))
    try:
        validated = module.validate_predict(data)
    except arg_errors as exc:
        fail(
            "invalid arguments:\n"
            + "\n".join(f"  {k}: {' '.join(v)}" for k, v in exc.errors.items())
        )
    module.warm()
    try:
        result = module.predict(validated).materialize()
    except ModuleError as exc:
        fail(f"the model failed: {exc}")
    if result.kind == "json":
        text = json.dumps(result.body, indent=2)
        if output:
            output.write_text(text + "\n")
            err.print(f"wrote {output}")
        else:
            print(text)
        return
    if output is None and sys.stdout.isatty():
        fail(f"the result is {result.media_type}; write it with -o FILE")
    if result.kind == "file":
        if output:
            shutil.copyfile(result.body, output)
        else:
            with open(result.body, "rb") as fh:
                shutil.copyfileobj(fh, sys.stdout.buffer)
        if result.delete:
            Path(result.body).unlink(missing_ok=True)
    elif output:
        output.write_bytes(result.body)
    else:
        sys.stdout.buffer.write(result.body)
    if output:
        err.print(f"wrote {output} ({result.media_type})")


@app.command("train", context_settings=EXTRA)
def train(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Module name or package.module[:attr]."),
    arg: list[str] = typer.Option([], "--arg", "-a", help="NAME=VALUE (repeat for lists)."),
    file: list[str] = typer.Option([], "--file", "-f", help="FIELD=PATH to upload."),
    input_: list[str] = typer.Option(
        [], "--input", "-i", help="NAME=PATH input given to the training (ctx.inputs)."
    ),
    output: Path = typer.Option(
        Path("train-output"),
        "-o",
        "--output",
        help="Directory for the training's outputs (weights).",
    ),
) -> None:
    """Train without a server, showing progress and metrics. Ctrl-C cancels cleanly.

    deepaas-cli's --NAME VALUE syntax works as for predict."""
    from forgehub.module.contract import Cancelled, TrainContext

    module = _load(name)
    if not module.trainable:
        fail(f"module {module.name!r} cannot be trained")
    data, arg_errors = _gather(module, module.train_specs, arg, file, list(ctx.args))
    try:
        validated = module.validate_train(data)
    except arg_errors as exc:
        fail(
            "invalid arguments:\n"
            + "\n".join(f"  {k}: {' '.join(v)}" for k, v in exc.errors.items())
        )
    inputs = {k: Path(v).expanduser().resolve() for k, v in _parse_pairs(input_, "--input")}
    for k, p in inputs.items():
        if not p.exists():
            fail(f"--input {k}: {p} does not exist")
    output.mkdir(parents=True, exist_ok=True)
    cancel = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: cancel.set())
    metrics: dict[str, float] = {}
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        TextColumn("{task.fields[m]}"),
        console=err.rich,
    ) as progress:
        task = progress.add_task(f"training {module.name}", total=1.0, m="")

        def on_metric(n: str, v: float, step: int | None) -> None:
            metrics[n] = v
            progress.update(task, m="  ".join(f"{k}={val:.4g}" for k, val in metrics.items()))

        tctx = TrainContext(
            inputs=inputs,
            output_dir=output,
            _metric=on_metric,
            _progress=lambda f, m: progress.update(task, completed=f),
            _cancelled=cancel.is_set,
        )
        try:
            result = module.train(validated, tctx)
        except Cancelled:
            fail("training cancelled", 130)
        except Exception as exc:  # noqa: BLE001 - module errors are shown, not a traceback
            fail(f"training failed: {type(exc).__name__}: {exc}")
        finally:
            signal.signal(signal.SIGINT, previous)
    out.print_json(json.dumps({"result": result, "output_dir": str(output)}))


@app.command("reproduce")
def reproduce(
    name: str = typer.Argument(..., help="Module name in the catalogue."),
    version: str = typer.Argument(..., help="A trained version of it."),
    on: str = typer.Option(None, "--on", help="Compute connection [default: the version's]."),
    publish_version: str = typer.Option(
        None, "--publish-version", help="Publish the new weights under this version name."
    ),
    server: str = typer.Option(None, "--server", envvar="FORGEHUB_URL", help="Server URL."),
    token: str = typer.Option(None, "--token", envvar="FORGEHUB_TOKEN", help="API token."),
) -> None:
    """Run the training that made a trained version again: the same module, arguments and
    input data (by digest), on your compute; prints the new job."""
    from forgehub.cli.client import Client

    c = Client(server, token)
    entry = c.get(f"/api/v1/catalog/modules/{name}")
    found = next((v for v in entry["versions"] if v["version"] == version), None)
    if found is None:
        fail(f"{name} has no version {version!r}")
    prov = found.get("provenance")
    if not prov:
        fail(f"{name} {version} was not made by a training here: there is nothing to re-run")
    body: dict[str, Any] = {
        "kind": "train",
        "module": name,
        "version": version,  # a module from a source: that code, in that environment's lock
        "args": prov.get("args") or {},
        "inputs": {
            i["name"]: i["digest"]
            for i in prov.get("inputs") or []
            if not i["name"].startswith("+")  # the module's own archive: part of its source
        },
    }
    if on:
        body["compute"] = on
    if publish_version:
        body["publish"] = True
        body["publish_version"] = publish_version
    job = c.submit_job(body)
    out.print(
        f"job {job['id']} re-runs the training of {name} {version} (job {prov['job']}) "
        f"on {job['compute']}; follow it with: forgehub job logs -f {job['id']}"
    )


@app.command("push")
def push(
    folder: Path = typer.Argument(..., help="The module's folder (with pyproject.toml)."),
    name: str = typer.Option(
        None, "--name", help="Module name to check for [default: the one module it has]."
    ),
    server: str = typer.Option(None, "--server", envvar="FORGEHUB_URL", help="Server URL."),
    token: str = typer.Option(None, "--token", envvar="FORGEHUB_TOKEN", help="API token."),
) -> None:
    """Build a module's folder into a wheel, check that it loads in an environment of its own,
    and push the wheel as an artifact; prints its source (wheel:sha256:…) to train, predict or
    add to the catalogue with."""
    import hashlib
    import tempfile

    from forgehub.envs import environments as envs
    from forgehub.envs.sources import Source
    from forgehub.jobs.runner import cache_root

    if not (folder / "pyproject.toml").is_file() and not (folder / "setup.py").is_file():
        fail(f"{folder} has no pyproject.toml or setup.py: it is not a Python package")

    def say(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    with tempfile.TemporaryDirectory(prefix="forgehub-push-") as tmp:
        try:
            wheel = _build_wheel(folder, Path(tmp), say)
            digest = "sha256:" + hashlib.sha256(wheel.read_bytes()).hexdigest()
            src = Source("wheel", digest, filename=wheel.name)
            root = cache_root() / "envs"
            lock = envs.lock(src, say, wheel)
            env = envs.ensure(lock, root, say, wheel)
            desc = _describe(env, envs.host_overlay(root), name or lock["module"]["name"])
        except envs.EnvironmentFailed as exc:
            fail(str(exc))
        say(
            f"loads: {desc['name']} ({desc['kind']}"
            + (", trainable" if desc["trainable"] else "")
            + f"), predict arguments: {', '.join(s['name'] for s in desc['predict_specs'])}"
        )
        from forgehub.cli.client import Client

        art = Client(server, token).request(
            "POST",
            "/api/v1/artifacts",
            params={"filename": wheel.name, "name": f"{desc['name']}-source", "tag": "latest"},
            content=wheel.read_bytes(),
            headers={"Content-Type": "application/octet-stream"},
        )
    source = f"wheel:{art['digest']}"
    out.print(source)
    say(
        f"train it:  forgehub train {source} --name {desc['name']} --data DATASET\n"
        f"list it:   forgehub catalog add --source {source} --name {desc['name']}"
    )


def _hosted(text: str, name: str, weights: Path | None, lock: Path | None = None) -> Any:
    """``text`` as a module source served from its own environment on this machine (built or
    found in the cache); None when it is a module name."""
    import hashlib
    import os
    import tempfile

    from forgehub.envs import environments as envs
    from forgehub.envs import sources
    from forgehub.envs.hosted import HostedModule
    from forgehub.jobs import sandbox
    from forgehub.jobs.runner import cache_root

    # this is the user's own machine: a repository on its disk is theirs to serve
    os.environ.setdefault("FORGEHUB_ALLOW_FILE_SOURCES", "1")
    local: Path | None = None
    try:
        if text.endswith((".whl", ".tar.gz")) and Path(text).is_file():
            local = Path(text)
            digest = "sha256:" + hashlib.sha256(local.read_bytes()).hexdigest()
            src = sources.Source("wheel", digest, filename=sources.archive_name(local.name))
        else:
            found = sources.parse(text)
            if found is None:
                return None
            if found.kind == "wheel":
                fail("a wheel artifact is served by the platform; here, give the wheel's file")
            src = sources.resolve(found)
    except sources.SourceError as exc:
        fail(str(exc))
    if weights is not None and not weights.exists():
        fail(f"{weights} does not exist")

    def say(message: str) -> None:
        err.print(message, markup=False, highlight=False)

    root = cache_root() / "envs"
    work = Path(tempfile.mkdtemp(prefix="forgehub-serve-"))

    def fetch() -> Path | None:
        if src.kind == "git":
            return envs.checkout(src, work / "repo", say)
        return local

    try:
        pinned = json.loads(lock.read_text()) if lock is not None else None
        env = envs.prepare(src, root, say, fetch, pinned)
        shutil.rmtree(work / "repo", ignore_errors=True)
        return HostedModule(
            name or src.default_name,
            env,
            envs.host_overlay(root),
            work,
            weights.resolve() if weights else None,
            sandboxed=sandbox.mode() == "on",
        )
    except (envs.EnvironmentFailed, sources.SourceError) as exc:
        shutil.rmtree(work, ignore_errors=True)
        fail(str(exc))
    except Exception as exc:  # ModuleError: the module did not load
        shutil.rmtree(work, ignore_errors=True)
        fail(f"cannot serve {src}: {exc}")


def _build_wheel(folder: Path, dest: Path, say: Any) -> Path:
    import subprocess

    from forgehub.envs.environments import EnvironmentFailed, uv_bin

    say(f"building a wheel of {folder}")
    proc = subprocess.run(
        [uv_bin(), "build", "--wheel", "--quiet", "--out-dir", str(dest), str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise EnvironmentFailed(f"cannot build {folder}: {proc.stderr.strip()[-500:]}")
    return wheels[0]


def _describe(env: Path, overlay: Path, name: str) -> dict[str, Any]:
    """Load the module in its environment with the module host, as the platform will."""
    import os
    import subprocess

    from forgehub.envs import environments as envs

    proc = subprocess.run(
        [envs.interpreter(env), "-m", "forgehub.module.host"],
        input=json.dumps({"op": "open", "name": name}) + "\n",
        capture_output=True,
        text=True,
        env=envs.module_env(env, overlay, dict(os.environ)),
        timeout=300,
        check=False,
    )
    try:
        answer: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    except (IndexError, ValueError):
        answer = {"error": "module", "message": proc.stderr.strip()[-500:]}
    if answer.get("error"):
        raise envs.EnvironmentFailed(f"the module does not load: {answer.get('message')}")
    return answer
