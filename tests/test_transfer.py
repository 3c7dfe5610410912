"""`imgsearch export` / `imgsearch import`: the three indices as NDJSON, streamed, into another alias with the same
answers to every search; mismatched targets and damaged files refused."""

from __future__ import annotations

import gzip
import json
import tracemalloc

import numpy as np
import pytest

from cli.demo import edited_copy
from crawler.config import load_settings
from crawler.sample_site import SiteServer
from index_setup.indices import delete_indices, ensure_indices
from index_setup.mappings import sources_alias, urls_alias
from index_setup.transfer import KINDS, export_indices, import_documents, open_text, prepare_target, read_header
from query import Searcher
from tests.cli_runs import in_process
from tests.test_crawl import crawl
from tests.test_recrawl import gallery_site


@pytest.fixture(scope="module")
def crawled(crawl_settings_env, index_alias, tmp_path_factory, es):
    """A site of 3 pages x 4 images plus one on every page, crawled into this module's alias."""
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}
    routes = gallery_site(3, 4, shared=1)
    with SiteServer(routes) as site:
        crawl(env, tmp_path_factory.mktemp("transfer"), site.url + "/")
    es.indices.refresh(index=f"{index_alias},{sources_alias(index_alias)},{urls_alias(index_alias)}")
    images = [route.body for path, route in sorted(routes.items()) if path.endswith(".jpg")]
    return env, images


@pytest.fixture
def cli(monkeypatch, capsys, crawled):
    """Run `imgsearch …` in this process with the crawl's environment: (exit status, stdout, stderr)."""
    return in_process(monkeypatch, capsys, crawled[0])


@pytest.fixture
def other(es, index_alias, request):
    """Another alias of this module, deleted afterwards."""
    name = f"{index_alias}-{request.node.name[5:20].replace('_', '-')}"
    yield name
    delete_indices(es, name)


def documents(es, alias: str) -> dict[str, dict[str, dict]]:
    """kind -> id -> _source, of the three indices behind `alias`."""
    names = dict(zip(KINDS, (alias, sources_alias(alias), urls_alias(alias)), strict=True))
    es.indices.refresh(index=",".join(names.values()))
    return {kind: {h["_id"]: h["_source"] for h in es.search(index=name, size=1000)["hits"]["hits"]}
            for kind, name in names.items()}


def image_meta(es, alias: str) -> dict:
    return next(iter(es.indices.get_mapping(index=alias).body.values()))["mappings"]["_meta"]


def without_timing(response: dict) -> dict:
    return {k: v for k, v in response.items() if k != "took_ms"}


def test_export_then_import_elsewhere_gives_identical_documents_and_top_10s(crawled, cli, es, index_alias, other,
                                                                             tmp_path):
    env, images = crawled
    path = tmp_path / "photos.ndjson"
    status, out, err = cli("export", str(path), "--index", index_alias)
    assert status == 0, err
    assert "13 images, 15 sources, 13 image URLs" in out
    status, out, err = cli("import", str(path), "--index", other)
    assert status == 0, err
    assert f"created {other}, {other}-sources, {other}-urls" in out

    before, after = documents(es, index_alias), documents(es, other)
    assert {k: len(v) for k, v in after.items()} == {"images": 13, "sources": 15, "urls": 13}
    assert after == before, "every document, vector, hash and date comes back as it was"
    assert image_meta(es, other) == image_meta(es, index_alias)

    searcher = Searcher(load_settings(env))
    try:
        queries = [images[0], images[7], edited_copy(images[3])]
        for query in queries:
            here = searcher.search_image(query, k=10, index=index_alias)
            there = searcher.search_image(query, k=10, index=other)
            assert len(here["results"]) == 10
            assert without_timing(there) == without_timing(here)
        assert here["results"][0]["match"] == "near", "the edited copy is found as a near duplicate"
        for text in ("a photo", "une image rouge"):
            here = searcher.search_text(text, k=10, index=index_alias)
            assert len(here["results"]) == 10
            assert without_timing(searcher.search_text(text, k=10, index=other)) == without_timing(here)
    finally:
        searcher.close()


def test_the_file_is_a_header_the_documents_and_an_end_line_gzip_too(crawled, cli, es, index_alias, other, tmp_path):
    path = tmp_path / "photos.ndjson.gz"
    status, _, err = cli("export", str(path), "--index", index_alias)
    assert status == 0, err
    with gzip.open(path, "rt", encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    head, body, end = lines[0], lines[1:-1], lines[-1]
    assert head["format"] == "imgsearch-export" and head["schema_version"] == 2 and head["alias"] == index_alias
    meta = head["indices"]["images"]["meta"]
    assert meta["dims"] == 512 and meta["normalized"] == "l2" and meta["model"] == crawled[0]["IMGSEARCH_IMAGE_MODEL"]
    assert {k: v["docs"] for k, v in head["indices"].items()} == {"images": 13, "sources": 15, "urls": 13}
    assert end == {"end": True, "counts": {"images": 13, "sources": 15, "urls": 13}}
    assert [d["kind"] for d in body] == ["images"] * 13 + ["sources"] * 15 + ["urls"] * 13
    image = body[0]["source"]
    assert len(image["image_embedding"]) == 512 and len(image["phash"]) == 16 and image["phash_crops"]
    assert body[0]["id"] == image["sha256"]

    status, out, err = cli("import", str(path), "--index", other)
    assert status == 0, err
    assert documents(es, other) == documents(es, index_alias)
    status, out, err = cli("import", str(path), "--index", other)  # again: the same documents, replaced
    assert status == 0, err
    assert {k: len(v) for k, v in documents(es, other).items()} == {"images": 13, "sources": 15, "urls": 13}


def test_import_refuses_a_target_of_another_model_or_other_dims(crawled, cli, es, index_alias, other, tmp_path):
    path = tmp_path / "photos.ndjson"
    assert cli("export", str(path), "--index", index_alias)[0] == 0
    ensure_indices(es, other, dims=512, model="some-other-model")
    status, _, err = cli("import", str(path), "--index", other)
    assert status == 2
    assert "holds vectors of the image model some-other-model" in err and "Traceback" not in err
    assert es.count(index=other)["count"] == 0, "nothing is written into a refused target"

    delete_indices(es, other)
    ensure_indices(es, other, dims=256, model=crawled[0]["IMGSEARCH_IMAGE_MODEL"])
    status, _, err = cli("import", str(path), "--index", other)
    assert status == 2 and "image_embedding: dims 256, expected 512" in err
    assert es.count(index=other)["count"] == 0


def test_a_cut_short_or_foreign_file_is_refused(crawled, cli, es, index_alias, other, tmp_path):
    full = tmp_path / "photos.ndjson"
    assert cli("export", str(full), "--index", index_alias)[0] == 0
    lines = full.read_text(encoding="utf-8").splitlines(keepends=True)
    cut = tmp_path / "cut.ndjson"
    cut.write_text("".join(lines[:10]), encoding="utf-8")
    status, _, err = cli("import", str(cut), "--index", other)
    assert status == 2 and "ends without its end line: it is incomplete" in err and "9 documents" in err

    torn = tmp_path / "torn.ndjson"
    torn.write_text("".join(lines[:10]) + lines[10][:100], encoding="utf-8")
    status, _, err = cli("import", str(torn), "--index", other)
    assert status == 2 and "line 11: not JSON" in err

    foreign = tmp_path / "foreign.ndjson"
    foreign.write_text('{"hello": "world"}\n', encoding="utf-8")
    status, _, err = cli("import", str(foreign), "--index", f"{other}-x")
    assert status == 2 and "not an imgsearch export" in err
    assert not es.indices.exists(index=f"{other}-x"), "nothing is created for a file that is not an export"

    older = tmp_path / "older.ndjson"
    older.write_text(json.dumps({**json.loads(lines[0]), "schema_version": 1}) + "\n", encoding="utf-8")
    status, _, err = cli("import", str(older), "--index", f"{other}-x")
    assert status == 2 and "schema v1" in err and "imgsearch index upgrade" in err
    assert cli("import", str(tmp_path / "absent.ndjson"), "--index", other)[0] == 2


def test_export_and_import_stream_in_constant_memory(es, index_alias, tmp_path):
    """Memory at the peak stays a fraction of the file (a few pages of documents), whatever its size: reading the
    whole file, or holding every document, would take several times its size."""
    source, target = f"{index_alias}-big", f"{index_alias}-big-copy"
    ensure_indices(es, source, dims=512, model="m")
    rng = np.random.default_rng(7)
    count = 2500
    try:
        from elasticsearch import helpers

        def docs():
            for i in range(count):
                vector = rng.normal(size=512).astype(np.float32)
                yield {"_index": source, "_id": f"img{i:05d}", "_source": {
                    "image_id": f"img{i:05d}", "sha256": f"img{i:05d}", "image_url": f"http://a.test/{i}.jpg",
                    "relative_path": f"full/{i}.jpg", "width": 100, "height": 80, "format": "jpeg",
                    "image_embedding": (vector / np.linalg.norm(vector)).tolist(), "domains": ["a.test"],
                    "first_seen": "2026-01-01T00:00:00Z", "last_seen": "2026-01-02T00:00:00Z", "model": "m"}}

        helpers.bulk(es, docs(), chunk_size=500)
        es.indices.refresh(index=source)
        path = str(tmp_path / "big.ndjson")
        tracemalloc.start()
        try:
            with open_text(path, "w") as out:
                counts = export_indices(es, source, out)
            _, export_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            with open_text(path, "r") as stream:
                record = read_header(stream)
                prepare_target(es, target, record)
                imported = import_documents(es, target, stream)
            _, import_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        size = (tmp_path / "big.ndjson").stat().st_size
        assert counts == imported == {"images": count, "sources": 0, "urls": 0}
        assert size > 20_000_000
        assert export_peak < size / 2, (export_peak, size)
        assert import_peak < size / 2, (import_peak, size)
        assert es.count(index=target)["count"] == count
    finally:
        delete_indices(es, source)
        delete_indices(es, target)
