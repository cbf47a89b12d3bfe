"""The marketplace: search, facets, metadata v1/v2, ownership; on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from forgehub.catalog.metadata import from_v1, validate
from forgehub.config import Settings
from forgehub.server import create_app
from tests.conftest import _db_counter, make_user

CAT = "/api/v1/catalog/modules"
V1 = {
    "title": "Image classification (TF)",
    "summary": "Classify images with a pre-trained network",
    "description": ["Reads an image and returns labels.", "Retrain it on your own data."],
    "keywords": [
        "tensorflow",
        "docker",
        "api-v2",
        "trainable",
        "inference",
        "pre-trained",
        "image classification",
    ],
    "license": "Apache 2.0",
    "date_creation": "2019-01-01",
    "sources": {
        "code": "https://github.com/example/image-classification-tf",
        "docker_registry_repo": "example/image-classification-tf",
        "pre_trained_weights": "https://example.org/weights.tar.gz",
    },
    "dataset_url": "https://example.org/imagenet",
}


def meta(
    title: str,
    summary: str,
    categories: list[str],
    tags: list[str],
    libraries: list[str] | None = None,
) -> dict:
    return {
        "metadata_version": "2.0.0",
        "title": title,
        "summary": summary,
        "description": f"# {title}\n\n{summary}",
        "tags": tags,
        "tasks": ["Classification"],
        "categories": categories,
        "libraries": libraries or ["PyTorch"],
        "data-type": ["Image"],
    }


@pytest.fixture(params=["sqlite", "postgres"])
def cat_client(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[TestClient]:
    url = None
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").create_database(f"cat{next(_db_counter)}")
    settings = Settings(data_dir=tmp_path / "data", database_url=url)
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = "Bearer " + settings.admin_token_file.read_text().strip()
        yield c


def test_search_finds_digits_and_counts_facets(cat_client: TestClient) -> None:
    c = cat_client
    for name, m in (
        ("cats", meta("Cat detector", "Finds cats in photos", ["AI4 inference"], ["cats"])),
        (
            "dogs",
            meta(
                "Dog breeds",
                "Names the breed of a dog",
                ["AI4 inference", "AI4 trainable"],
                ["dogs"],
            ),
        ),
        (
            "numbers",
            meta(
                "Number reader",
                "Reads handwritten digits from forms",
                ["AI4 trainable"],
                ["ocr", "forms"],
                ["TensorFlow"],
            ),
        ),
    ):
        r = c.put(f"{CAT}/{name}", json={"metadata": m})
        assert r.status_code == 200, r.text
    r = c.get(CAT, params={"q": "digit"}, headers={"Authorization": ""})  # public read
    assert r.status_code == 200
    body = r.json()
    names = [m["name"] for m in body["items"]]
    # (digits and digits-cnn are installed) title/tags matches rank above a description's
    assert names[-1] == "numbers"
    assert set(names) == {"digits", "digits-cnn", "numbers"}
    assert body["total"] == 3
    assert body["facets"]["category"] == {"trainable": 3, "inference": 2, "pre-trained": 2}
    # facets over everything, then filtered
    everything = c.get(CAT).json()
    assert everything["total"] == 5
    assert everything["facets"]["category"]["inference"] == 4
    assert everything["facets"]["library"] == {"PyTorch": 3, "Scikit-learn": 1, "TensorFlow": 1}
    trainable = c.get(CAT, params={"category": "trainable", "sort": "name"}).json()
    assert [m["name"] for m in trainable["items"]] == ["digits", "digits-cnn", "dogs", "numbers"]
    page2 = c.get(CAT, params={"sort": "name", "per_page": 3, "page": 2}).json()
    assert [m["name"] for m in page2["items"]] == ["dogs", "numbers"]
    assert c.get(CAT, params={"sort": "nope"}).status_code == 422


def test_module_page_has_versions_schemas_and_readme(cat_client: TestClient) -> None:
    m = cat_client.get(f"{CAT}/digits").json()
    assert "pre-trained" in m["categories"] and m["readme"]
    v = m["versions"][0]
    assert v["pre_trained"] and v["weights_digest"].startswith("sha256:")
    assert v["predict_schema"]["properties"]["top_k"]["maximum"] == 10
    assert v["train_schema"]["properties"]["epochs"]["minimum"] == 1
    assert cat_client.get(f"{CAT}/nope").status_code == 404


def test_v1_metadata_imports_as_v2(cat_client: TestClient, tmp_path: Path) -> None:
    converted = validate(from_v1(V1))
    assert converted.categories == ["AI4 trainable", "AI4 inference", "AI4 pre trained"]
    assert converted.libraries == ["TensorFlow"]
    assert converted.links.source_code == V1["sources"]["code"]
    assert converted.links.weights == V1["sources"]["pre_trained_weights"]
    assert "Retrain it" in converted.description
    assert converted.tags == ["image classification"]
    # through the API (auto-detected) and back out as ai4-metadata.yml
    r = cat_client.put(f"{CAT}/imgclass", json={"metadata": V1})
    assert r.status_code == 200, r.text
    assert r.json()["categories"] == ["trainable", "inference", "pre-trained"]
    yml = cat_client.get(f"{CAT}/imgclass/ai4-metadata.yml").text
    assert "metadata_version: 2.0.0" in yml and "AI4 pre trained" in yml


def test_invalid_metadata_names_every_bad_field(cat_client: TestClient) -> None:
    bad = {
        "metadata_version": "2.0.0",
        "title": "",
        "categories": ["AI4 everything"],
        "tags": "not-a-list",
        "resources": {"inference": {"cpu": -1}},
        "colour": "red",
    }
    r = cat_client.put(f"{CAT}/broken", json={"metadata": bad})
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    paths = {e["path"] for e in r.json()["errors"]}
    assert {
        "title",
        "summary",
        "categories.0",
        "tags",
        "resources.inference.cpu",
        "colour",
    } <= paths
    assert cat_client.get(f"{CAT}/broken").status_code == 404  # nothing half-saved


def test_only_the_owner_can_change_an_entry(cat_client: TestClient) -> None:
    alice = make_user(cat_client, "alice")
    bob = make_user(cat_client, "bob")
    m = meta("Alice's model", "Something of alice", ["AI4 inference"], ["alice"])
    assert cat_client.put(f"{CAT}/alices", json={"metadata": m}, headers=alice).status_code == 200
    m2 = {**m, "title": "Stolen"}
    r = cat_client.put(f"{CAT}/alices", json={"metadata": m2}, headers=bob)
    assert r.status_code == 403
    r = cat_client.post(f"{CAT}/alices/versions", json={"version": "2"}, headers=bob)
    assert r.status_code == 403
    r = cat_client.post(f"{CAT}/alices/deprecate", json={}, headers=bob)
    assert r.status_code == 403
    assert (
        cat_client.put(
            f"{CAT}/alices", json={"metadata": m2}, headers={"Authorization": ""}
        ).status_code
        == 401
    )
    # the owner can; the admin can too. Weights must be the publisher's own artifact:
    # a digest alone (someone else's, or made up) is refused
    r = cat_client.post(
        f"{CAT}/alices/versions",
        json={"version": "1.1", "weights_digest": "sha256:" + "a" * 64},
        headers=alice,
    )
    assert r.status_code == 404 and "push the weights first" in r.json()["detail"]
    pushed = cat_client.post("/api/v1/artifacts", content=b"alice's weights", headers=alice)
    assert pushed.status_code == 201, pushed.text
    r = cat_client.post(
        f"{CAT}/alices/versions",
        json={"version": "1.1", "weights_digest": pushed.json()["digest"]},
        headers=bob,
    )
    assert r.status_code == 403
    r = cat_client.post(
        f"{CAT}/alices/versions",
        json={"version": "1.1", "weights_digest": pushed.json()["digest"]},
        headers=alice,
    )
    assert r.status_code == 201 and r.json()["pre_trained"]
    assert "pre-trained" in cat_client.get(f"{CAT}/alices").json()["categories"]
    r = cat_client.post(f"{CAT}/alices/deprecate", json={"note": "use v2"}, headers=alice)
    assert r.status_code == 200 and r.json()["deprecated"]
    assert "alices" not in [x["name"] for x in cat_client.get(CAT).json()["items"]]
    assert (
        cat_client.get(CAT, params={"include_deprecated": True, "q": "alice"}).json()["total"] == 1
    )
    assert cat_client.get(f"{CAT}/alices").json()["title"] == "Alice's model"


def test_cli_add_search_show(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI against a live server."""
    import os
    import signal
    import subprocess
    import sys

    from tests.services import free_port, wait_port

    port = free_port()
    env = {**os.environ, "FORGEHUB_DATA_DIR": str(tmp_path / "data")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "forgehub.cli", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port, 60, proc)
        monkeypatch.setenv("FORGEHUB_DATA_DIR", str(tmp_path / "data"))
        monkeypatch.setenv("FORGEHUB_URL", f"http://127.0.0.1:{port}")
        from forgehub.cli.main import app

        folder = tmp_path / "image-classification"
        folder.mkdir()
        (folder / "metadata.json").write_text(json.dumps(V1))
        runner = CliRunner()
        r = runner.invoke(app, ["catalog", "add", str(folder), "--version", "1.0"])
        assert r.exit_code == 0, r.output
        r = runner.invoke(app, ["catalog", "search", "image", "--json"])
        assert r.exit_code == 0, r.output
        found = [m["name"] for m in json.loads(r.stdout)["items"]]
        assert found[0] == "image-classification"  # title match first; digits has tag "image"
        r = runner.invoke(app, ["catalog", "search", "--category", "pre-trained"])
        assert r.exit_code == 0 and "digits" in r.stdout and "category" in r.stdout
        r = runner.invoke(app, ["catalog", "show", "image-classification"])
        assert r.exit_code == 0 and "1.0" in r.stdout
        weights = tmp_path / "weights.bin"
        weights.write_bytes(b"trained weights")
        r = runner.invoke(app, ["artifact", "push", str(weights), "--json"])
        assert r.exit_code == 0, r.output
        digest = json.loads(r.stdout)["digest"]
        r = runner.invoke(
            app,
            ["catalog", "publish", "image-classification", "--version", "1.1", "--weights", digest],
        )
        assert r.exit_code == 0 and "pre-trained" in r.stdout
        r = runner.invoke(app, ["catalog", "deprecate", "image-classification", "--note", "old"])
        assert r.exit_code == 0
        bad = tmp_path / "bad.yml"
        bad.write_text("metadata_version: 2.0.0\ntitle: x\n")
        r = runner.invoke(app, ["catalog", "add", str(bad), "--name", "bad"])
        assert r.exit_code == 1 and "summary" in r.output and "Traceback" not in r.output
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def test_the_search_index_patched_after_writes_equals_a_rebuilt_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Writes patch the in-memory index in place (no rebuild on each write): after adding,
    re-tagging, deprecating and deleting entries, every search answers exactly as an index
    built from scratch does. Every ranking and facet count is kept between searches here
    (KEEP_FROM=1), so a write that failed to drop them would answer from stale ones."""
    from sqlalchemy import delete

    from forgehub.catalog import service
    from forgehub.catalog.metadata import ModuleMetadata
    from forgehub.db import Database, upgrade
    from forgehub.db.models import CatalogFacet, CatalogModule

    def entry(i: int, tags: list[str], cats: list[str]) -> ModuleMetadata:
        return ModuleMetadata.model_validate(
            {
                "title": f"Model {i} for {tags[0]}",
                "summary": f"Finds {tags[-1]} things.",
                "description": "A model.",
                "tags": tags,
                "categories": cats,
                "libraries": ["PyTorch" if i % 2 else "Keras"],
            }
        )

    queries = [
        service.SearchQuery(q="cats"),
        service.SearchQuery(q="dogs", filters={"category": ["trainable"]}),
        service.SearchQuery(filters={"library": ["PyTorch"]}),
        service.SearchQuery(sort="name", per_page=5, page=2),
        service.SearchQuery(sort="updated"),
        service.SearchQuery(q="model", include_deprecated=True),
    ]
    monkeypatch.setattr(service, "KEEP_FROM", 1)
    mask_from = service.MASK_FROM
    upgrade(db_url)
    db = Database(db_url)
    try:
        with db.session() as s:
            for i in range(20):
                service.save_module(s, f"m{i:02d}", entry(i, ["cats"], ["AI4 inference"]), None)
        with db.session() as s:
            service.search(s, queries[0])  # the index, built
        steps = [
            lambda s: service.save_module(
                s, "m03", entry(3, ["dogs"], ["AI4 trainable"]), None
            ),  # re-tagged
            lambda s: service.save_module(
                s, "new", entry(99, ["dogs", "cats"], ["AI4 trainable"]), None
            ),
            lambda s: _deprecate(s, "m05", CatalogModule),
            lambda s: _delete_entry(s, "m07", delete, CatalogFacet, CatalogModule),
        ]
        for step in steps:
            with db.session() as s:
                step(s)
            with db.session() as s:
                patched = [service.search(s, q) for q in queries]
            service._indexes.clear()  # noqa: SLF001 - a rebuilt index is the reference
            with db.session() as s:
                rebuilt = [service.search(s, q) for q in queries]
            assert patched == rebuilt
            monkeypatch.setattr(service, "MASK_FROM", 1)  # facets counted with bit masks
            with db.session() as s:
                assert [service.search(s, q) for q in queries] == rebuilt
            monkeypatch.setattr(service, "MASK_FROM", mask_from)
        assert {i["name"] for i in rebuilt[1]["items"]} == {"m03", "new"}
        assert rebuilt[0]["total"] == 18  # 20 - m03 (now dogs) + new - m05 (deprecated) - m07
    finally:
        db.dispose()


def test_pages_ranked_in_part_are_the_pages_of_the_whole_ranking(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A common word's first page ranks only its best few dozen matches, and later pages, other
    filters and other visitors reuse that start of the ranking while it reaches far enough:
    every page, visited in any order, is that page of the whole ranking, with no entry shown
    twice or skipped (ties in score are ordered too)."""
    from forgehub.catalog import service
    from forgehub.catalog.metadata import ModuleMetadata
    from forgehub.db import Database, upgrade

    monkeypatch.setattr(service, "KEEP_FROM", 1)  # every ranking kept, however short
    upgrade(db_url)
    db = Database(db_url)
    try:
        with db.session() as s:
            for i in range(150):  # "river" in every entry, more often in some: many ties
                meta = ModuleMetadata.model_validate(
                    {
                        "title": f"Model {i}",
                        "summary": "river " * (1 + i % 4),
                        "categories": ["AI4 trainable" if i % 3 else "AI4 inference"],
                    }
                )
                service.save_module(s, f"m{i:03d}", meta, None)
        visits = [(1, None), (2, None), (9, None), (1, "trainable"), (4, "inference"), (15, None)]
        seen: dict[tuple[int, str | None], list[str]] = {}
        with db.session() as s:
            for page, cat in visits:
                q = service.SearchQuery(
                    q="river", page=page, per_page=10, filters={"category": [cat]} if cat else {}
                )
                seen[page, cat] = [i["name"] for i in service.search(s, q)["items"]]
        service._indexes.clear()  # noqa: SLF001 - the reference: every match ranked at once
        with db.session() as s:
            for page, cat in visits:
                q = service.SearchQuery(
                    q="river", page=1, per_page=150, filters={"category": [cat]} if cat else {}
                )
                whole = [i["name"] for i in service.search(s, q)["items"]]
                assert seen[page, cat] == whole[(page - 1) * 10 : page * 10], (page, cat)
        assert len(seen[15, None]) == 10 and seen[1, None] != seen[2, None]
    finally:
        db.dispose()


def _deprecate(s: Any, name: str, module: Any) -> None:
    from forgehub.db.models import utcnow

    m = s.scalar(select(module).where(module.name == name))
    m.deprecated, m.updated_at = True, utcnow()  # as the API's deprecation does


def _delete_entry(s: Any, name: str, delete: Any, facet: Any, module: Any) -> None:
    m = s.scalar(select(module).where(module.name == name))
    s.execute(delete(facet).where(facet.module_id == m.id))
    if s.get_bind().dialect.name != "postgresql":
        s.execute(text("DELETE FROM catalog_fts WHERE rowid = :r"), {"r": m.fts_rowid})
    s.delete(m)


def test_a_store_from_before_fts_rowids_upgrades_and_writes_find_their_row(
    tmp_path: Path,
) -> None:
    """A SQLite store whose full-text rows were keyed only by module id (revision 0020) is
    upgraded: each entry learns its row, a stale duplicate row goes, and a later save of the
    entry replaces its own row (the old words stop matching, no second row appears)."""
    from forgehub.catalog import service
    from forgehub.catalog.metadata import ModuleMetadata
    from forgehub.db import Database, upgrade
    from forgehub.db.models import CatalogModule

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0020")
    db = Database(url)
    try:
        with db.engine.begin() as conn:
            for mid, name, words in (("m1", "alpha", "zebra"), ("m2", "beta", "otter")):
                conn.execute(
                    text(
                        "INSERT INTO catalog_modules (id, name, title, summary, description, "
                        "meta, source, deprecated, use_count, created_at, updated_at) VALUES "
                        "(:id, :name, :name, '', '', '{}', 'added', 0, 0, CURRENT_TIMESTAMP, "
                        "CURRENT_TIMESTAMP)"
                    ),
                    {"id": mid, "name": name},
                )
                conn.execute(
                    text(
                        "INSERT INTO catalog_fts (module_id, name, title, summary, description, "
                        "tags) VALUES (:id, :name, :name, '', :words, '')"
                    ),
                    {"id": mid, "name": name, "words": words},
                )
            # an older row of m1 that a lost delete left behind: the newer row counts
            conn.execute(
                text(
                    "INSERT INTO catalog_fts (rowid, module_id, name, title, summary, "
                    "description, tags) VALUES (0, 'm1', 'alpha', 'alpha', '', 'stale', '')"
                )
            )
        upgrade(url)
        with db.session() as s:
            fts = dict(s.execute(text("SELECT rowid, module_id FROM catalog_fts")).all())
            kept = {m.id: m.fts_rowid for m in s.scalars(select(CatalogModule))}
        assert sorted(fts.values()) == ["m1", "m2"]  # the stale row is gone
        assert kept == {mid: rowid for rowid, mid in fts.items()}
        fts_m1 = kept["m1"]

        def names(q: str) -> list[str]:
            with db.session() as s:
                return [i["name"] for i in service.search(s, service.SearchQuery(q=q))["items"]]

        assert names("zebra") == ["alpha"] and names("otter") == ["beta"]
        assert names("stale") == []
        with db.session() as s:
            meta = ModuleMetadata.model_validate({"title": "alpha", "summary": "now a lion"})
            service.save_module(s, "alpha", meta, None)
        assert names("lion") == ["alpha"] and names("zebra") == []
        with db.session() as s:
            meta = ModuleMetadata.model_validate({"title": "gamma", "summary": "a new one"})
            gamma = service.save_module(s, "gamma", meta, None).id
            rows = s.execute(text("SELECT module_id, rowid FROM catalog_fts")).all()
            kept = {m.id: m.fts_rowid for m in s.scalars(select(CatalogModule))}
        assert sorted(mid for mid, _ in rows) == sorted(["m1", "m2", gamma])  # one row each
        assert dict(rows) == kept and kept["m1"] == fts_m1  # each entry knows its row
        assert names("gamma") == ["gamma"]
    finally:
        db.dispose()
