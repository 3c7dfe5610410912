"""Queries by image and by text against a crawled index, through the Python API and `imgsearch search`."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from elasticsearch import helpers
from PIL import Image

from crawler.config import load_settings
from crawler.sample_site import Route, SiteServer, encode, page, photo_like
from index_setup.indices import delete_indices
from index_setup.mappings import image_mapping, sources_alias, sources_mapping
from query import QueryInputError, Searcher
from query.search import FACTS_SECONDS
from tests.test_crawl import crawl

IMAGES_PER_SITE = 12


def gallery(seed_base: int) -> dict[str, Route]:
    routes = {}
    cells = []
    for i in range(IMAGES_PER_SITE):
        path = f"/photos/p{seed_base + i}.jpg"
        routes[path] = Route(encode(photo_like(seed_base + i, 360 + 20 * (i % 4), 300)), "image/jpeg")
        cells.append(f'<img src="{path}" alt="photo {i}">')
    routes["/"] = page(f"Gallery {seed_base}", "".join(cells))
    return routes


@pytest.fixture(scope="module")
def indexed(crawl_settings_env, index_alias, tmp_path_factory, es):
    """Two small sites crawled into the module's index: one on 127.0.0.1, one on localhost."""
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias}
    with SiteServer(gallery(100)) as first, SiteServer(gallery(200), host="localhost") as second:
        tmp = tmp_path_factory.mktemp("query-crawl")
        crawl(env, tmp, first.url + "/")
        crawl(env, tmp, f"http://localhost:{second.port}/")
        es.indices.refresh(index=f"{index_alias},{index_alias}-sources")
        yield {"env": env, "first": first, "second": second}


@pytest.fixture(scope="module")
def searcher(indexed, index_alias):
    settings = load_settings({k: v for k, v in indexed["env"].items()})
    searcher = Searcher(settings)
    yield searcher
    searcher.close()


def cli(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_a_crawled_image_finds_itself_first_as_exact_with_its_page(searcher, indexed, index_alias, tmp_path):
    original = indexed["first"].routes["/photos/p103.jpg"].body
    path = tmp_path / "query.jpg"
    path.write_bytes(original)
    response = searcher.search_image(str(path), k=5, index=index_alias)
    first = response["results"][0]
    assert first["match"] == "exact" and first["score"] == 1.0
    assert first["image_url"].endswith("/photos/p103.jpg")
    assert [s["page_url"] for s in first["sources"]] == [indexed["first"].url + "/"]
    assert first["sources"][0]["page_title"] == "Gallery 100"
    assert first["sources_total"] == 1
    assert len(response["results"]) == 5
    assert len({r["image_id"] for r in response["results"]}) == 5, "an image is never listed twice"
    assert all(r["match"] == "semantic" for r in response["results"][1:])


def test_a_resized_recompressed_copy_finds_its_original_in_the_top_3(searcher, indexed, index_alias):
    with Image.open(io.BytesIO(indexed["first"].routes["/photos/p105.jpg"].body)) as im:
        copy = im.resize((im.width // 2, im.height // 2))
    buffer = io.BytesIO()
    copy.save(buffer, format="JPEG", quality=60)
    response = searcher.search_image(buffer.getvalue(), k=5, index=index_alias)
    first = response["results"][0]
    assert first["image_url"].endswith("/photos/p105.jpg")
    assert first["match"] == "near" and first["distance_bits"] <= 10 and first["matched_crop"]
    assert all(r["match"] == "semantic" for r in response["results"][1:])


def _edited(data: bytes, edit: str) -> bytes:
    with Image.open(io.BytesIO(data)) as im:
        im = im.convert("RGB")
        w, h = im.size
        if edit == "resize_70":
            im = im.resize((round(w * 0.7), round(h * 0.7)), Image.Resampling.LANCZOS)
        elif edit == "crop_5_corner":
            im = im.crop((0, 0, round(w * 0.95), round(h * 0.95)))
        elif edit == "crop_10_corner":
            im = im.crop((round(w * 0.1), round(h * 0.1), w, h))
        elif edit == "grey":
            im = im.convert("L").convert("RGB")
    return encode(im, "JPEG", quality=70)


@pytest.mark.parametrize("edit", ["resize_70", "crop_5_corner", "crop_10_corner", "grey"])
def test_edited_copies_are_near_duplicates_with_their_source_pages(searcher, indexed, index_alias, edit):
    copy = _edited(indexed["second"].routes["/photos/p206.jpg"].body, edit)
    response = searcher.search_image(copy, k=5, index=index_alias)
    first = response["results"][0]
    assert first["match"] == "near", response["results"][:2]
    assert first["image_url"].endswith("/photos/p206.jpg")
    assert first["sources"][0]["page_url"] == f"http://localhost:{indexed['second'].port}/"
    assert [r["match"] for r in response["results"][1:]] == ["semantic"] * 4
    sources = searcher.find_sources(copy, index=index_alias)
    assert [(s["match"], s["page_url"]) for s in sources["sources"]] == [
        ("near", f"http://localhost:{indexed['second'].port}/")]
    assert sources["oldest"] == sources["sources"][0] and sources["sources_total"] == 1


def test_a_different_image_is_never_exact_or_near(searcher, index_alias):
    for seed in range(900, 906):
        stranger = encode(photo_like(seed, 400, 300))
        response = searcher.search_image(stranger, k=5, index=index_alias)
        assert [r["match"] for r in response["results"]] == ["semantic"] * 5
        assert searcher.find_sources(stranger, index=index_alias)["sources"] == []


def test_sources_command_heads_with_the_oldest_source(indexed, index_alias, tmp_path):
    path = tmp_path / "copy.jpg"
    path.write_bytes(_edited(indexed["first"].routes["/photos/p108.jpg"].body, "crop_5_corner"))
    table = cli(indexed["env"], "sources", "--image", str(path), "--index", index_alias)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("Oldest known source: " + indexed["first"].url + "/")
    assert "near" in table.stdout and "Gallery 100" in table.stdout
    answer = cli(indexed["env"], "sources", "--image", str(path), "--index", index_alias, "--json")
    assert answer.returncode == 0, answer.stderr
    body = json.loads(answer.stdout)
    assert body["oldest"]["page_url"] == indexed["first"].url + "/"
    assert body["images"][0]["image_url"].endswith("/photos/p108.jpg")
    nothing = tmp_path / "other.jpg"
    nothing.write_bytes(encode(photo_like(999)))
    none = cli(indexed["env"], "sources", "--image", str(nothing), "--index", index_alias)
    assert none.returncode == 0 and "No indexed copy" in none.stdout


def test_sources_of_an_indexed_image_by_its_id_are_those_of_its_file(searcher, indexed, index_alias, tmp_path):
    original = indexed["first"].routes["/photos/p108.jpg"].body
    image_id = hashlib.sha256(original).hexdigest()
    by_file = searcher.find_sources(original, index=index_alias)
    by_id = searcher.find_sources(index=index_alias, image_id=image_id)
    assert [s["page_url"] for s in by_id["sources"]] == [s["page_url"] for s in by_file["sources"]]
    assert [(i["image_id"], i["match"]) for i in by_id["images"]] == [
        (i["image_id"], i["match"]) for i in by_file["images"]]
    assert by_id["images"][0] == {**by_file["images"][0]} and by_id["images"][0]["match"] == "exact"
    table = cli(indexed["env"], "sources", "--image", image_id, "--index", index_alias)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("Oldest known source: " + indexed["first"].url + "/")
    unknown = cli(indexed["env"], "sources", "--image", "0" * 64, "--index", index_alias)
    assert unknown.returncode == 2 and f"no image {'0' * 64} in the index" in unknown.stderr


def test_pil_and_bytes_sources_give_the_same_answer(searcher, indexed, index_alias):
    data = indexed["first"].routes["/photos/p101.jpg"].body
    by_bytes = searcher.search_image(data, k=3, index=index_alias)
    with Image.open(io.BytesIO(data)) as im:
        by_pil = searcher.search_image(im.convert("RGB"), k=3, index=index_alias)
    assert by_bytes["results"][0]["match"] == "exact"
    assert by_pil["results"][0]["image_url"] == by_bytes["results"][0]["image_url"]


def test_domain_filter_is_a_prefilter_that_still_returns_k(searcher, index_alias):
    for domain in ("127.0.0.1", "localhost"):
        response = searcher.search_text("a photo", k=10, domain=domain, index=index_alias)
        assert len(response["results"]) == 10
        assert all(domain in r["domains"] for r in response["results"])


def test_text_query_json_has_the_documented_shape(indexed, index_alias):
    result = cli(indexed["env"], "search", "--text", "un chat noir", "--k", "4", "--index", index_alias, "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert set(body) == {"query", "took_ms", "results"}
    assert body["query"]["text"] == "un chat noir" and body["query"]["type"] == "text"
    assert len(body["results"]) == 4
    scores = [r["score"] for r in body["results"]]
    assert scores == sorted(scores, reverse=True)
    for r in body["results"]:
        assert {"score", "match", "image_id", "image_url", "image_name", "relative_path", "width", "height",
                "sources", "sources_total"} <= set(r)
        assert {"page_url", "page_title", "first_seen", "last_seen"} <= set(r["sources"][0])


def test_table_output_names_results_and_pages(indexed, index_alias, tmp_path):
    path = tmp_path / "q.jpg"
    path.write_bytes(indexed["second"].routes["/photos/p202.jpg"].body)
    result = cli(indexed["env"], "search", "--image", str(path), "--k", "3", "--index", index_alias)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "exact" in lines[1] and "p202.jpg" in lines[1]
    assert "seen on Gallery 200" in lines[2]


def test_a_loopback_url_is_refused_unless_allowed(indexed, index_alias):
    url = indexed["first"].url + "/photos/p104.jpg"
    refused = cli(indexed["env"], "search", "--image", url, "--index", index_alias)
    assert refused.returncode == 2
    assert "internal address 127.0.0.1" in refused.stderr and "--allow-private" in refused.stderr
    before = indexed["first"].requests["/photos/p104.jpg"]
    allowed = cli(indexed["env"], "search", "--image", url, "--index", index_alias, "--allow-private", "--json")
    assert allowed.returncode == 0, allowed.stderr
    assert json.loads(allowed.stdout)["results"][0]["match"] == "exact"
    assert indexed["first"].requests["/photos/p104.jpg"] == before + 1


@pytest.mark.parametrize("case", ["missing_file", "not_an_image", "missing_index", "unreachable", "model_offline"])
def test_each_error_is_one_line_with_status_2(case, indexed, index_alias, tmp_path):
    env = dict(indexed["env"])
    args = ["search", "--text", "x", "--index", index_alias]
    if case == "missing_file":
        args, expected = ["search", "--image", str(tmp_path / "nope.jpg"), "--index", index_alias], "no such file"
    elif case == "not_an_image":
        text = tmp_path / "notes.txt"
        text.write_text("just some words, not an image")
        args, expected = ["search", "--image", str(text), "--index", index_alias], "not a usable image (not_image"
    elif case == "missing_index":
        args, expected = ["search", "--text", "x", "--index", "no-such-index"], "imgsearch index create"
    elif case == "unreachable":
        env.update(ES_URL="http://elastic:hunter2@127.0.0.1:9", ES_PASSWORD="hunter2")
        expected = "unreachable at http://***@127.0.0.1:9"
    else:
        env.update(IMGSEARCH_TEXT_MODEL="sentence-transformers/clip-ViT-B-32-multilingual-v1", HF_HUB_OFFLINE="1")
        expected = "HF_HUB_OFFLINE"
    result = cli(env, *args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("imgsearch: error: "), result.stderr
    assert expected in lines[0]
    assert "hunter2" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_query_input_errors_from_python(searcher, index_alias):
    with pytest.raises(QueryInputError, match="empty"):
        searcher.search_text("  ", index=index_alias)
    with pytest.raises(QueryInputError):
        searcher.search_image(b"", index=index_alias)


def test_demo_runs_to_the_end_with_stand_in_models(es_settings, tmp_path):
    env = {"IMGSEARCH_IMAGE_MODEL": "sentence-transformers/clip-ViT-B-32",
           "IMGSEARCH_TEXT_MODEL": "sentence-transformers/clip-ViT-B-32-multilingual-v1",
           "HF_HUB_OFFLINE": "1", "FILES_STORE": str(tmp_path / "store"),
           "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(tmp_path / "dead")}
    alias = f"test-demo-{os.getpid()}"
    result = subprocess.run([sys.executable, "-m", "cli", "demo", "--index", alias], capture_output=True,
                            text=True, timeout=600, env={**os.environ, **env})
    try:
        assert result.returncode == 0, result.stdout + result.stderr[-3000:]
        assert "Traceback" not in result.stderr
        out = result.stdout
        assert "stand-in models" in out
        assert out.count("Query: ") == 2
        image_table = out.split("Query: image ", 1)[1].split("Query: ", 1)[0]
        first = next(line for line in image_table.splitlines() if line.lstrip().startswith("1. "))
        # The query is an edited copy of photo-005: its original is the first result, labelled a near copy.
        assert re.match(r"\s+1\. \d\.\d{3}\s+near \d+b .* photo-005\.jpg\s+<", first), first
        assert "seen on Gallery" in out
        assert "no match" not in out
    finally:
        cli({}, "index", "delete", "--index", alias, "--yes")


def test_filters_are_prefilters_that_return_k_when_enough_match(searcher, index_alias):
    wide = searcher.search_text("a photo", k=5, index=index_alias, domains=["127.0.0.1"], min_width=400)
    assert len(wide["results"]) == 5
    assert all(r["width"] >= 400 and "127.0.0.1" in r["domains"] for r in wide["results"])
    # 6 images per site are at least 400 px wide: asking for 10 gives those 6, no more, no other.
    assert len(searcher.search_text("a photo", k=10, index=index_alias, domains="127.0.0.1",
                                    min_width=400)["results"]) == 6
    both = searcher.search_text("a photo", k=24, index=index_alias, domains=["127.0.0.1", "localhost"],
                                formats=["jpg"], min_height=300)
    assert len(both["results"]) == 24
    assert searcher.search_text("a photo", k=5, index=index_alias, formats=["png"])["results"] == []
    assert searcher.search_text("a photo", k=5, index=index_alias, since="2999-01-01")["results"] == []
    assert searcher.search_text("a photo", k=5, index=index_alias, until="2000-01-01")["results"] == []
    assert len(searcher.search_text("a photo", k=5, index=index_alias, since="2000-01-01",
                                    until="2999-12-31")["results"]) == 5
    assert wide["query"]["domains"] == ["127.0.0.1"] and wide["query"]["min_width"] == 400


def test_min_score_is_a_threshold_and_first_seen_sorts_by_age(searcher, indexed, index_alias):
    original = indexed["first"].routes["/photos/p102.jpg"].body
    strict = searcher.search_image(original, k=10, index=index_alias, min_score=0.999)
    assert strict["results"][0]["match"] == "exact"
    assert all(r["score"] >= 0.999 for r in strict["results"])
    loose = searcher.search_image(original, k=10, index=index_alias)
    assert len(strict["results"]) < len(loose["results"]) == 10
    oldest_first = searcher.search_text("a photo", k=24, index=index_alias, sort="first_seen")
    seen = [r["first_seen"] for r in oldest_first["results"]]
    assert seen == sorted(seen) and len(seen) == 24
    assert "127.0.0.1" in oldest_first["results"][0]["domains"], "the first site was crawled first"


def test_filter_flags_and_their_errors_on_the_command_line(indexed, index_alias):
    ok = cli(indexed["env"], "search", "--text", "x", "--k", "3", "--index", index_alias, "--domain", "localhost",
             "--format", "jpeg", "--min-width", "380", "--since", "2020-01-01", "--sort", "first_seen", "--json")
    assert ok.returncode == 0, ok.stderr
    body = json.loads(ok.stdout)
    assert body["query"]["domains"] == ["localhost"] and body["query"]["sort"] == "first_seen"
    assert len(body["results"]) == 3
    assert all(r["width"] >= 380 and r["domains"] == ["localhost"] for r in body["results"])
    bad = cli(indexed["env"], "search", "--text", "x", "--index", index_alias, "--since", "last tuesday")
    assert bad.returncode == 2 and "since must be an ISO date" in bad.stderr and "Traceback" not in bad.stderr


def test_another_model_is_refused_for_queries_and_crawls(indexed, index_alias, standin_models, tmp_path):
    import shutil

    other = tmp_path / "another-model"
    shutil.copytree(standin_models[0], other)
    env = {**indexed["env"], "IMGSEARCH_IMAGE_MODEL": str(other)}
    query = tmp_path / "q.jpg"
    query.write_bytes(indexed["first"].routes["/photos/p101.jpg"].body)
    refused = cli(env, "search", "--image", str(query), "--index", index_alias)
    assert refused.returncode == 2
    assert str(standin_models[0]) in refused.stderr and str(other) in refused.stderr
    assert "imgsearch reembed" in refused.stderr
    crawl = subprocess.run([sys.executable, "-m", "cli", "crawl", indexed["first"].url + "/"], capture_output=True,
                           text=True, timeout=120, env={**os.environ, **env, "IMGSEARCH_INDEX": index_alias})
    assert crawl.returncode == 2 and "vectors of two models cannot be compared" in crawl.stderr


@contextmanager
def schema_1_copy(es, index_alias: str, name: str, model: str) -> Iterator[str]:
    """The crawled indices copied into ones of the first schema (no perceptual hashes, no urls index), behind
    their own alias."""
    alias = f"{index_alias}-{name}"
    images = image_mapping(512, model)
    for field in ("phash", "phash_crops"):
        del images["properties"][field]
    sources = sources_mapping()
    images["_meta"]["schema_version"] = sources["_meta"]["schema_version"] = 1
    try:
        for source, target, mapping in ((index_alias, alias, images),
                                        (sources_alias(index_alias), sources_alias(alias), sources)):
            es.indices.create(index=f"{target}-v1", mappings=mapping, aliases={target: {"is_write_index": True}})
            hits = es.search(index=source, size=1000)["hits"]["hits"]
            helpers.bulk(es, ({"_index": target, "_id": hit["_id"], "_source": {
                k: v for k, v in hit["_source"].items() if k not in ("phash", "phash_crops")}} for hit in hits),
                refresh=True)
        yield alias
    finally:
        delete_indices(es, alias)


def test_a_running_searcher_finds_near_duplicates_once_its_index_is_upgraded(searcher, indexed, index_alias, es):
    copy = _edited(indexed["second"].routes["/photos/p206.jpg"].body, "crop_5_corner")
    with schema_1_copy(es, index_alias, "old", indexed["env"]["IMGSEARCH_IMAGE_MODEL"]) as old:
        before = searcher.search_image(copy, k=5, index=old)
        assert "predates perceptual hashes" in before["notes"][0]
        assert "near" not in {r["match"] for r in before["results"]}
        upgraded = cli(indexed["env"], "index", "upgrade", "--index", old)
        assert upgraded.returncode == 0, upgraded.stderr
        after = searcher.search_image(copy, k=5, index=old)  # the same searcher, as a running `imgsearch serve`
        assert "notes" not in after
        assert after["results"][0]["match"] == "near" and after["results"][0]["image_url"].endswith("/p206.jpg")


def test_a_running_source_finder_sees_an_upgrade_within_facts_seconds(searcher, indexed, index_alias, es):
    now = [0.0]
    finder = Searcher(searcher.settings, embedder=searcher.embedder, clock=lambda: now[0])
    copy = _edited(indexed["second"].routes["/photos/p206.jpg"].body, "crop_5_corner")
    try:
        with schema_1_copy(es, index_alias, "old-sources", indexed["env"]["IMGSEARCH_IMAGE_MODEL"]) as old:
            before = finder.find_sources(copy, index=old)
            assert before["sources"] == [] and "predates perceptual hashes" in before["notes"][0]
            upgraded = cli(indexed["env"], "index", "upgrade", "--index", old)
            assert upgraded.returncode == 0, upgraded.stderr
            now[0] += FACTS_SECONDS  # no exact copy: no hit shows the new index, the staleness bound does
            after = finder.find_sources(copy, index=old)
            assert "notes" not in after
            assert [(s["match"], s["page_url"]) for s in after["sources"]] == [
                ("near", f"http://localhost:{indexed['second'].port}/")]
    finally:
        finder.close()
