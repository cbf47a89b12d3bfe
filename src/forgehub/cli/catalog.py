"""``forgehub catalog``: search, show, add, publish, deprecate and export marketplace entries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from forgehub.cli.client import Client, ServerOpt, TokenOpt, fail
from forgehub.cli.messages import Console, Table

app = typer.Typer(
    rich_markup_mode=None, help="Browse and publish the module marketplace.", no_args_is_help=True
)
out = Console(soft_wrap=True)
JsonOpt = typer.Option(False, "--json", help="Print JSON.")


@app.command("search")
def search(
    query: str = typer.Argument("", help="Words to look for (title, summary, description, tags)."),
    category: list[str] = typer.Option(
        [], "--category", "-c", help="trainable, inference, pre-trained or tools."
    ),
    task: list[str] = typer.Option([], "--task"),
    library: list[str] = typer.Option([], "--library"),
    data_type: list[str] = typer.Option([], "--data-type"),
    tag: list[str] = typer.Option([], "--tag", "-t"),
    sort: str = typer.Option("relevance", help="relevance, name, updated or use."),
    page: int = typer.Option(1, min=1),
    per_page: int = typer.Option(20, min=1, max=100),
    deprecated: bool = typer.Option(False, "--deprecated", help="Include deprecated modules."),
    as_json: bool = JsonOpt,
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Search the marketplace; shows matching modules and facet counts."""
    params: dict[str, Any] = {
        "q": query,
        "category": category,
        "task": task,
        "library": library,
        "data_type": data_type,
        "tag": tag,
        "sort": sort,
        "page": page,
        "per_page": per_page,
        "include_deprecated": deprecated,
    }
    res = Client(server, token).get("/api/v1/catalog/modules", params=params)
    if as_json:
        out.print_json(json.dumps(res))
        return
    table = Table(
        "name",
        "title",
        "categories",
        "tags",
        "uses",
        title=f"{res['total']} module(s), page {res['page']}",
    )
    for m in res["items"]:
        table.add_row(
            m["name"] + (" (deprecated)" if m["deprecated"] else ""),
            m["title"],
            ", ".join(m["categories"]),
            ", ".join(m["tags"][:5]),
            str(m["use_count"]),
        )
    out.print(table)
    for facet, counts in res["facets"].items():
        if counts:
            shown = "  ".join(f"{k} ({v})" for k, v in list(counts.items())[:8])
            out.print(f"[bold]{facet}[/bold]: {shown}", highlight=False)


@app.command("show")
def show(
    name: str, as_json: bool = JsonOpt, server: str = ServerOpt, token: str = TokenOpt
) -> None:
    """Show one module: metadata, versions, resources and links."""
    m = Client(server, token).get(f"/api/v1/catalog/modules/{name}")
    if as_json:
        out.print_json(json.dumps(m))
        return
    out.print(
        f"[bold]{m['title']}[/bold] ({m['name']})"
        + ("  [red]deprecated[/red]" if m["deprecated"] else "")
    )
    out.print(m["summary"], highlight=False)
    out.print(
        f"categories: {', '.join(m['categories']) or '-'}   owner: {m['owner'] or '-'}"
        f"   uses: {m['use_count']}"
    )
    for key, value in (m["metadata"].get("links") or {}).items():
        out.print(f"  {key}: {value}", highlight=False)
    table = Table("version", "pre-trained", "weights", "source", "created", "changelog")
    for v in m["versions"]:
        table.add_row(
            v["version"] + (" (deprecated)" if v["deprecated"] else ""),
            "yes" if v["pre_trained"] else "no",
            (v["weights_digest"] or "-")[:19],
            v["source"] or "-",
            v["created_at"][:10],
            (v["changelog"] or "")[:60],
        )
    out.print(table)
    for v in m["versions"]:
        prov = v.get("provenance")
        if not prov:
            continue
        metrics = ", ".join(f"{k}={val:.4g}" for k, val in (prov.get("metrics") or {}).items())
        inputs = ", ".join(f"{i['name']}={i['digest'][:19]}…" for i in prov.get("inputs") or [])
        env = prov.get("environment") or {}
        lock = env.get("lock") or {}
        out.print(
            f"{v['version']}: trained by {prov.get('trained_by') or '?'} in job {prov['job']}"
            f" from {prov.get('module_source') or prov.get('module')}"
            + (
                f"\n  environment {env['digest'][:12]}: Python {lock.get('python')}, "
                f"{', '.join(lock.get('packages') or []) or 'no packages'}"
                if env.get("digest")
                else ""
            )
            + f"\n  args {json.dumps(prov.get('args') or {})}"
            f"\n  inputs {inputs or '-'}\n  metrics {metrics or '-'}"
            f"\n  reproduce: forgehub module reproduce {m['name']} {v['version']}",
            highlight=False,
        )


def _read_metadata(path: Path) -> dict[str, Any]:
    from forgehub.catalog.metadata import MetadataError, load_file

    if path.is_dir():
        for name in ("ai4-metadata.yml", "ai4-metadata.yaml", "metadata.json"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            fail(f"{path} has no ai4-metadata.yml or metadata.json")
    try:
        return load_file(path)
    except MetadataError as exc:
        fail(str(exc))


@app.command("add")
def add(
    path: Path = typer.Argument(
        None,
        help="A module's source folder, or its ai4-metadata.yml / "
        "metadata.json (v1 is converted to v2). Optional with --source.",
    ),
    name: str = typer.Option(None, "--name", help="Module name [default: folder name or title]."),
    version: str = typer.Option(None, "--version", help="Also record this version."),
    source: str = typer.Option(
        None,
        "--source",
        help="The module's code: git+URL@ref (recorded as its commit), pip:REQUIREMENT or "
        "wheel:ARTIFACT. It can then be trained, predicted with and served from the catalogue.",
    ),
    changelog: str = typer.Option("", "--changelog"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Add (or update) a module from its metadata, its source, or both."""
    src = _source(source) if source else None
    if path is None and src is None:
        fail("give the module's folder or metadata file, or --source")
    if path is not None:
        if not path.exists():
            fail(f"{path} does not exist")
        doc = _read_metadata(path)
        if name is None:
            folder = path if path.is_dir() else path.resolve().parent
            name = folder.name or str(doc.get("title", "module")).lower().replace(" ", "-")
    else:
        assert src is not None
        name = name or src.default_name
        doc = {
            "title": name,
            "summary": f"Module from {source}"[:400],
            "categories": ["AI4 trainable", "AI4 inference"],
        }
    body: dict[str, Any] = {"metadata": doc}
    if src is not None:
        body["version"] = {
            "version": version or _version_of(src),
            "changelog": changelog,
            "source": source,
        }
    elif version:
        body["version"] = {
            "version": version,
            "changelog": changelog,
            "source": str(path.resolve()) if path else "",
        }
    m = Client(server, token).request("PUT", f"/api/v1/catalog/modules/{name}", json=body)
    out.print(f"{m['name']}: {m['title']} ({', '.join(m['categories']) or 'no category'})")
    for v in m.get("versions", [])[:1] if src is not None else []:  # newest first
        out.print(f"version {v['version']}: {v['source']}")


def _source(text: str) -> Any:
    from forgehub.envs.sources import SourceError, parse

    try:
        src = parse(text)
    except SourceError as exc:
        fail(str(exc))
    if src is None:
        fail(f"{text!r} is not a module source: git+URL@ref, pip:REQUIREMENT or wheel:ARTIFACT")
    return src


def _version_of(src: Any) -> str:
    """A version name for a source when none is given: the git ref, the pin, the digest."""
    if src.kind == "git":
        return str(src.ref or "main")[:64]
    if src.kind == "pip" and "==" in src.value:
        return str(src.value.split("==", 1)[1]).strip()[:64]
    if src.kind == "wheel" and src.value.startswith("sha256:"):
        return f"wheel-{src.value[7:19]}"
    return "latest"


@app.command("publish")
def publish(
    name: str,
    version: str = typer.Option(..., "--version", help="The new version."),
    changelog: str = typer.Option("", "--changelog"),
    source: str = typer.Option("", "--source", help="Where this version's code comes from."),
    weights: str = typer.Option(
        None, "--weights", help="sha256:… digest of the weights artifact (makes it pre-trained)."
    ),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Publish a new version of a module you own."""
    v = Client(server, token).post(
        f"/api/v1/catalog/modules/{name}/versions",
        json={
            "version": version,
            "changelog": changelog,
            "source": source,
            "weights_digest": weights,
        },
    )
    out.print(f"{name} {v['version']} published" + (" (pre-trained)" if v["pre_trained"] else ""))


@app.command("deprecate")
def deprecate(
    name: str,
    version: str = typer.Option(None, "--version", help="Only this version."),
    note: str = typer.Option("", "--note", help="Why, and what to use instead."),
    undo: bool = typer.Option(False, "--undo", help="Remove the deprecation."),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Deprecate a module you own, or one of its versions."""
    Client(server, token).post(
        f"/api/v1/catalog/modules/{name}/deprecate",
        json={"version": version, "note": note, "undo": undo},
    )
    what = f"{name} {version}" if version else name
    out.print(f"{what} {'no longer ' if undo else ''}deprecated")


@app.command("export")
def export(
    name: str,
    output: Path = typer.Option(None, "-o", "--output"),
    server: str = ServerOpt,
    token: str = TokenOpt,
) -> None:
    """Export a module's metadata as ai4-metadata.yml (v2)."""
    c = Client(server, token)
    r = c.http.get(f"/api/v1/catalog/modules/{name}/ai4-metadata.yml")
    if r.status_code != 200:
        c.request("GET", f"/api/v1/catalog/modules/{name}")  # prints the error
    if output:
        output.write_text(r.text)
        out.print(f"wrote {output}")
    else:
        print(r.text, end="")
