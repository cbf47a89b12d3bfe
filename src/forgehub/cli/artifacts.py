"""``forgehub storage`` and ``forgehub artifact``: bring your own storage, move artifacts."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from forgehub.cli.client import (
    Client,
    ServerOpt,
    TokenOpt,
    exit_for,
    fail,
    key_values,
)
from forgehub.cli.messages import Console, Spinner, Table
from forgehub.errors import ForgehubError

if TYPE_CHECKING:
    from rich.progress import Progress

storage_app = typer.Typer(
    rich_markup_mode=None,
    help="Storage connections: bring your own S3, WebDAV, disk.",
    no_args_is_help=True,
)
artifact_app = typer.Typer(
    rich_markup_mode=None,
    help="Artifacts: content-addressed files and folders.",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")
CHUNK = 1 << 20


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


class _Quiet:
    """The progress of a command whose stderr is not a terminal: nothing to draw there, so
    rich is not loaded for it."""

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *_a: Any, **_k: Any) -> int:
        return 0

    def update(self, *_a: Any, **_k: Any) -> None:
        return None

    def reset(self, *_a: Any, **_k: Any) -> None:
        return None


def _progress() -> Progress:
    if err.plain():
        return _Quiet()  # type: ignore[return-value]
    from rich.progress import (  # only where something moves
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err.rich,
    )


# -- storage --------------------------------------------------------------------------------
def connection_config(set_: list[str], secret: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` settings plus ``--secret KEY=ENVVAR`` secrets read from the env."""
    config = key_values(set_)
    for pair in secret:
        key, _, var = pair.partition("=")
        if var not in os.environ:
            fail(f"--secret {key}: environment variable {var!r} is not set")
        config[key] = os.environ[var]
    return config


@storage_app.command("add")
def storage_add(
    name: str = typer.Argument(..., help="A name for the connection."),
    kind: str = typer.Argument(..., help="local, s3, webdav or blob."),
    set_: list[str] = typer.Option(
        [],
        "--set",
        "-s",
        help="KEY=VALUE setting (repeat), e.g. bucket=data endpoint_url=https://s3.example.org",
    ),
    secret: list[str] = typer.Option(
        [],
        "--secret",
        help="KEY=ENVVAR: read a secret from an "
        "environment variable (keeps it out of shell history).",
    ),
    no_test: bool = typer.Option(False, "--no-test", help="Save without testing it first."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Add a storage connection; it is tested before it is saved."""
    config = connection_config(set_, secret)
    c = Client(server, token)
    conn = c.post(
        "/api/v1/storage/connections",
        json={"name": name, "kind": kind, "config": config, "test": not no_test},
    )
    out.print(
        f"added {conn['kind']} connection {conn['name']}"
        + ("" if no_test else " (tested: reachable, credentials accepted)")
    )


@storage_app.command("test")
def storage_test(name: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Test a saved connection."""
    r = Client(server, token).post(f"/api/v1/storage/connections/{name}/test")
    if not r["ok"]:
        fail(f"{name}: {r['detail']}")
    out.print(f"{name}: {r['detail']}")


@storage_app.command("ls")
def storage_ls(as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """List your connections (secrets are never shown)."""
    rows = Client(server, token).get("/api/v1/storage/connections")
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("name", "kind", "settings", "default")
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in r["config"].items() if v not in ("", None))
        table.add_row(r["name"], r["kind"], settings, "yes" if r["default"] else "")
    out.print(table)


@storage_app.command("rm")
def storage_rm(name: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Remove a connection (its content stays where it is)."""
    Client(server, token).delete(f"/api/v1/storage/connections/{name}")
    out.print(f"removed {name}")


# -- artifacts ------------------------------------------------------------------------------
def _file_chunks(path: Path, progress: Progress, task: Any) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK):
            progress.update(task, advance=len(block))
            yield block


def _tar_chunks(root: Path, progress: Progress, task: Any, follow: bool = False) -> Iterator[bytes]:
    """A tar stream of ``root`` built on the fly (no temporary archive); with ``follow``,
    linked files are stored as the files they point at."""
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            if (full.is_symlink() and not follow) or not full.is_file():
                continue
            info = tarfile.TarInfo(full.relative_to(root).as_posix())
            st = full.stat()
            info.size, info.mode, info.mtime = st.st_size, st.st_mode & 0o755, int(st.st_mtime)
            yield info.tobuf(format=tarfile.PAX_FORMAT)
            yield from _file_chunks(full, progress, task)
            if info.size % 512:
                yield b"\0" * (512 - info.size % 512)
    yield b"\0" * 1024


def _coalesced(chunks: Iterator[bytes], size: int = CHUNK) -> Iterator[bytes]:
    """``chunks`` joined into blocks of about ``size``: a folder of small files is a tar of
    thousands of pieces (header, bytes, padding), each of which would otherwise go out as an
    HTTP chunk of its own, with a system call on each side."""
    buf = bytearray()
    for c in chunks:
        buf += c
        if len(buf) >= size:
            yield bytes(buf)
            buf.clear()
    if buf:
        yield bytes(buf)


def _tree_size(root: Path, follow: bool = False) -> int:
    return sum(
        p.stat().st_size for p in root.rglob("*") if p.is_file() and (follow or not p.is_symlink())
    )


@artifact_app.command("push")
def push(
    path: Path = typer.Argument(..., help="A file or a folder."),
    to: str = typer.Option(None, "--to", help="Connection name [default: your default]."),
    name: str = typer.Option(None, "--name", help="NAME or NAME:TAG for it."),
    follow_links: bool = typer.Option(
        False, "--follow-links", help="Store linked files as the files they point at."
    ),
    as_json: bool = JsonOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Push a file or folder as an artifact (nothing is re-sent that the store has)."""
    if not path.exists():
        fail(f"{path} does not exist")
    files = None
    if path.is_dir() and not follow_links:
        from forgehub.artifacts.digests import regular_files

        odd: list[str] = []
        files = regular_files(path, odd)  # listed once: checked here, hashed below
        if odd:
            fail(
                f"{path} holds {len(odd)} symbolic link(s) or special file(s), which an artifact "
                f"cannot hold (first: {odd[0]}); push with --follow-links to store what links "
                "point at, or remove them"
            )
    c = Client(server, token)
    params: dict[str, Any] = {"filename": path.name}
    if to:
        params["connection"] = to
    if name:
        n, _, t = name.partition(":")
        params["name"], params["tag"] = n, t or "latest"
    local = None if follow_links else _digests(path, files)
    if local is not None:
        art = _known(c, local[0], params)
        if art is not None:  # unchanged: one question, nothing sent
            _print_pushed(art, as_json)
            return
    total = _tree_size(path, follow_links) if path.is_dir() else path.stat().st_size
    with _progress() as progress:
        task = progress.add_task(f"push {path.name}", total=total)
        if local is not None:  # straight to the store, where it lets us
            sent = _push_direct(c, path, local, {**params, "connection": to}, progress, task)
            if sent is not None:
                progress.update(task, completed=total)
                _print_pushed({**sent[0], "uploaded": sent[1]}, as_json)
                return
            progress.reset(task)
        body = (
            _coalesced(_tar_chunks(path, progress, task, follow_links))
            if path.is_dir()
            else _file_chunks(path, progress, task)
        )
        headers = {
            "Content-Type": "application/x-tar" if path.is_dir() else "application/octet-stream"
        }
        art = c.request(
            "POST", "/api/v1/artifacts", params=params, content=body, headers=headers, timeout=None
        )
    _print_pushed(art, as_json)


def _push_direct(
    c: Client,
    path: Path,
    local: tuple[str, list[Any], bytes | None],
    params: dict[str, Any],
    progress: Progress,
    task: Any,
) -> tuple[dict[str, Any], int] | None:
    from forgehub.artifacts import direct
    from forgehub.storage.errors import StorageError

    digest, entries, manifest = local
    try:
        return direct.push(
            c.post,
            path if path.is_dir() else path.parent,
            "dir" if path.is_dir() else "file",
            digest,
            entries,
            manifest,
            params,
            lambda n: progress.update(task, advance=n),
        )
    except StorageError as exc:
        fail(f"push failed: {exc}")


def _digests(path: Path, files: list[Any] | None) -> tuple[str, list[Any], bytes | None]:
    """The digest of a file or folder (``files``: its regular files, listed), its files and
    (a folder) its manifest, worked out locally; the digests of files hashed before are
    remembered, so an unchanged tree is not read again."""
    from forgehub.artifacts.digests import ManifestEntry, build_manifest, hash_bytes
    from forgehub.artifacts.hashcache import HashCache

    spinner = Spinner(err, f"checking {path.name}…")  # once a file has to be read
    cache = HashCache(reading=spinner.start)
    try:
        with spinner:
            if path.is_dir():
                cache.preload(path)
                manifest, entries, _ = build_manifest(path, hasher=cache.hash, files=files)
                return hash_bytes(manifest), entries, manifest
            digest, size = cache.hash(path, lambda _n: None)
            return digest, [ManifestEntry(path.name, digest, size, 0o644)], None
    finally:
        cache.close()


def _known(c: Client, digest: str, params: dict[str, Any]) -> dict[str, Any] | None:
    """The artifact, if the store already holds this content as yours (one request)."""
    from forgehub.errors import NotFound

    body = {"digest": digest, **params}
    try:
        return dict(c.ask("POST", "/api/v1/artifacts/known", body))
    except NotFound:
        return None
    except ForgehubError as exc:
        exit_for(exc, c.server)


def _print_pushed(art: dict[str, Any], as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(art))
        return
    out.line(
        f"{art['digest']}  {art['kind']}  {_size(art['size'])}  "
        f"(uploaded to storage: {_size(art['uploaded'])})"
        + (f"  tags: {', '.join(art['tags'])}" if art["tags"] else "")
    )


@artifact_app.command("pull")
def pull(
    ref: str = typer.Argument(..., help="sha256:<digest>, NAME or NAME:TAG."),
    output: Path = typer.Option(None, "-o", "--output", help="Where to write it."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Download an artifact; files are verified against their digest."""
    c = Client(server, token)
    art = c.get(f"/api/v1/artifacts/{ref}")
    dest = output or Path(local_name(art["filename"], art["digest"]))
    if dest.exists() and (art["kind"] == "dir" or dest.is_dir()):
        fail(f"{dest} already exists")
    dest.parent.mkdir(parents=True, exist_ok=True)
    plan = c.get(f"/api/v1/artifacts/{ref}/plan")
    if plan["direct"]:  # straight from the store, in parallel
        from forgehub.artifacts import direct
        from forgehub.storage.errors import StorageError

        with _progress() as progress:
            task = progress.add_task(f"pull {ref}", total=art["size"])
            try:
                direct.pull(plan, dest, lambda n: progress.update(task, advance=n))
            except StorageError as exc:
                fail(f"download failed: {exc}")
        if art["kind"] == "file":
            stored = datetime.fromisoformat(art["created_at"]).timestamp()
            os.utime(dest, (stored, stored))
        out.line(f"{art['digest']} -> {dest}")
        return
    import http.client

    from forgehub.artifacts.digests import BackgroundHash

    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".pull-")
    h = BackgroundHash()  # hashed in a thread while the blocks are written
    try:
        with (
            os.fdopen(fd, "wb") as fh,  # buffered: each write lands whole
            _progress() as progress,
            c.download(f"/api/v1/artifacts/{ref}/content") as r,
        ):
            # a folder comes as a tar, a little larger than its files: no total to overshoot
            total = art["size"] if art["kind"] == "file" else None
            task = progress.add_task(f"pull {ref}", total=total)
            while block := h.readinto(r.readinto):  # into reused buffers, hashed behind
                fh.write(block)
                progress.update(task, advance=len(block))
        if art["kind"] == "file":
            actual = f"sha256:{h.hexdigest()}"
            if actual != art["digest"]:
                fail(f"corrupted download: expected {art['digest']}, got {actual}")
            stored = datetime.fromisoformat(art["created_at"]).timestamp()
            os.utime(tmp, (stored, stored))  # when it was stored, not 1970 or now
            os.replace(tmp, dest)
        else:
            _extract_verified(Path(tmp), dest, {f["path"]: f["digest"] for f in art["files"]})
    except ForgehubError as exc:
        exit_for(exc, c.server)
    except (OSError, http.client.HTTPException) as exc:
        fail(f"download broke off: {exc}")
    finally:
        h.close()
        Path(tmp).unlink(missing_ok=True)
    out.line(f"{art['digest']} -> {dest}")


def local_name(stored: str | None, digest: str) -> str:
    """A file name from the server, safe to write in the current directory: its last path
    segment, never empty, '.', '..' or hidden by a leading dot; else the digest."""
    fallback = digest.replace(":", "-")
    name = (stored or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    name = "".join(ch for ch in name if ch.isprintable())
    if not name or name in (".", "..") or name.startswith("."):
        return fallback
    return name


def _extract_verified(archive: Path, dest: Path, expected: dict[str, str]) -> None:
    """Unpack a pulled folder beside ``dest``, every file checked against its digest as it is
    written, and move it into place only when all of it is there."""
    from forgehub.artifacts.untar import Refused, unpack

    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".pull-tree-"))
    try:
        with open(archive, "rb") as fh:
            unpack(fh, staging, expected=expected)
        os.replace(staging, dest)
    except Refused as exc:
        fail(f"corrupted download: {exc}")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@artifact_app.command("ls")
def ls(
    name: str = typer.Option(None, "--name", help="Only artifacts tagged with this name."),
    as_json: bool = JsonOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """List your artifacts."""
    rows = Client(server, token).get("/api/v1/artifacts", params={"name": name} if name else {})
    if as_json:
        out.print_json(json.dumps(rows))
        return
    table = Table("digest", "kind", "size", "name", "tags", "locations", "created")
    for a in rows:
        table.add_row(
            a["digest"][:19] + "…",
            a["kind"],
            _size(a["size"]),
            a["filename"] or (a["tags"][0].split(":")[0] if a["tags"] else ""),
            ", ".join(a["tags"]),
            ", ".join(x["connection"] for x in a["locations"]),
            a["created_at"][:16],
        )
    out.print(table)


@artifact_app.command("show")
def show(ref: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Show an artifact: digest, size, locations, tags, and files of a folder."""
    out.print_json(json.dumps(Client(server, token).get(f"/api/v1/artifacts/{ref}")))


@artifact_app.command("cp")
def cp(
    ref: str,
    to: str = typer.Argument(..., help="Target connection."),
    move: bool = typer.Option(False, "--move", help="Forget the other locations."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Copy (or move) an artifact to another storage connection."""
    r = Client(server, token).post(f"/api/v1/artifacts/{ref}/copy", json={"to": to, "move": move})
    out.print(
        f"{r['digest']} now at {', '.join(x['connection'] for x in r['locations'])} "
        f"({r['blobs_copied']} object(s) copied)"
    )


@artifact_app.command("tag")
def tag(
    ref: str,
    name_tag: str = typer.Argument(..., help="NAME[:TAG]"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Give an artifact a name and tag."""
    n, _, t = name_tag.partition(":")
    Client(server, token).post(
        f"/api/v1/artifacts/{ref}/tags", json={"name": n, "tag": t or "latest"}
    )
    out.print(f"{ref} tagged {n}:{t or 'latest'}")


@artifact_app.command("rm")
def rm(ref: str, server: str = ServerOpt, token: str = TokenOpt) -> None:
    """Delete an artifact record (run gc to free its content)."""
    Client(server, token).delete(f"/api/v1/artifacts/{ref}")
    out.print(f"removed {ref}")


@artifact_app.command("gc")
def gc(
    connection: str = typer.Option("default", "--connection", "-c"),
    delete: bool = typer.Option(False, "--delete", help="Really delete (default: dry run)."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Find (and with --delete, remove) content no artifact references. Dry run by default."""
    r = Client(server, token).post(
        "/api/v1/artifacts/gc", json={"connection": connection, "dry_run": not delete}
    )
    for key in r["unreferenced"]:
        out.print(key, highlight=False)
    verb = "would free" if r["dry_run"] else "freed"
    out.print(
        f"{len(r['unreferenced'])} unreferenced object(s); {verb} {_size(r['bytes'])}"
        + ("  (dry run: add --delete)" if r["dry_run"] else "")
    )
