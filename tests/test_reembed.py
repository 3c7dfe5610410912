"""`imgsearch reembed`: the image index embedded again with another model from the stored originals, every field
copied, the alias switched; a missing original reported and kept without a vector; an interrupted run resumed."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from crawler.config import load_settings
from crawler.sample_site import SiteServer, encode, photo_like
from index_setup.indices import IndexConflict, ModelMismatch, stored_model
from index_setup.mappings import concrete_name, sources_alias, urls_alias
from index_setup.reembed import StoredOriginals, copied_document, reembed, reembed_index_name
from pipelines import imaging
from pipelines.embedding import Embedder
from pipelines.fetch import relative_path_for
from pipelines.indexing import utc_now
from query import Searcher
from tests.cli_runs import in_process
from tests.test_crawl import crawl
from tests.test_recrawl import gallery_site

IMAGES = 8


def other_model(base, folder, *, seed: int, dims: int | None = None):
    """Another image model: the stand-in's weights moved a little (and projected to `dims`)."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense

    model = SentenceTransformer(str(base), device="cpu")
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.02)
    if dims is not None:
        model = SentenceTransformer(modules=[*model, Dense(512, dims, bias=False,
                                                           activation_function=torch.nn.Identity())], device="cpu")
    model.save(str(folder))
    return str(folder)


@pytest.fixture(scope="module")
def models(standin_models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("other-models")
    image, _ = standin_models
    return {"moved": other_model(image, folder / "moved", seed=7),
            "small": other_model(image, folder / "small", seed=8, dims=256)}


@pytest.fixture(scope="module")
def crawled(crawl_settings_env, index_alias, tmp_path_factory, es):
    """Two pages of four images crawled into this module's alias, with a store of this module's own."""
    scratch = tmp_path_factory.mktemp("reembed")
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias, "FILES_STORE": str(scratch / "store")}
    with SiteServer(gallery_site(2, 4)) as site:
        crawl(env, scratch, site.url + "/")
    es.indices.refresh(index=f"{index_alias},{sources_alias(index_alias)},{urls_alias(index_alias)}")
    return env


@pytest.fixture(scope="module", autouse=True)
def no_leftovers(es, index_alias):
    """New image indices a failed test leaves behind no alias are deleted too."""
    yield
    for index in es.indices.get(index=f"{index_alias}-v2-*", allow_no_indices=True).body:
        es.indices.delete(index=index)  # by name: clusters refuse wildcard deletes


@pytest.fixture
def cli(monkeypatch, capsys, crawled):
    return in_process(monkeypatch, capsys, crawled)


def all_docs(es, index: str) -> dict[str, dict]:
    es.indices.refresh(index=index)
    return {h["_id"]: h["_source"] for h in es.search(index=index, size=1000)["hits"]["hits"]}


def behind(es, alias: str) -> list[str]:
    return list(es.indices.get_alias(name=alias).body)


def meta(es, alias: str) -> dict:
    return next(iter(es.indices.get_mapping(index=alias).body.values()))["mappings"]["_meta"]


def cosine(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def test_names_and_copies_are_plain():
    name = reembed_index_name("photos", "/models/My CLIP/")
    assert name == reembed_index_name("photos", "/models/My CLIP/"), "the same name every time: resumable"
    assert name.startswith("photos-v2-my-clip-") and name == name.lower() and " " not in name
    assert reembed_index_name("photos", "org/clip-ViT-L-14") != reembed_index_name("photos", "other/clip-ViT-L-14")
    doc = {"image_id": "a", "image_embedding": [1.0], "model": "old", "phash": "00ff00ff00ff00ff"}
    assert copied_document(doc, [0.5, 0.5], "new") == {"image_id": "a", "image_embedding": [0.5, 0.5],
                                                       "model": "new", "phash": "00ff00ff00ff00ff"}
    assert copied_document(doc, None, "new") == {"image_id": "a", "model": None, "phash": "00ff00ff00ff00ff"}


def test_reembed_switches_the_alias_keeping_every_image_and_reports_a_missing_original(crawled, cli, es, models,
                                                                                        index_alias, tmp_path,
                                                                                        caplog):
    before = all_docs(es, index_alias)
    sources_before, urls_before = all_docs(es, sources_alias(index_alias)), all_docs(es, urls_alias(index_alias))
    assert len(before) == IMAGES
    store = crawled["FILES_STORE"]
    lost_id, lost = sorted(before.items())[0]
    original = f"{store}/{lost['relative_path']}"
    shutil.move(original, tmp_path / "aside")
    try:
        status, out, err = cli("reembed", "--model", models["moved"], "--index", index_alias,
                               "--missing-file", str(tmp_path / "missing.jsonl"))
    finally:
        shutil.move(tmp_path / "aside", original)
    assert status == 1, err  # done, but one image has no vector
    assert "1 image(s) had no usable original" in out and "(missing 1)" in out
    assert f"{index_alias} now points at {reembed_index_name(index_alias, models['moved'])}" in out
    assert any(lost_id in r.getMessage() and r.levelname == "WARNING" for r in caplog.records), \
        "each image without its original is named in a warning"
    listed = (tmp_path / "missing.jsonl").read_text().splitlines()
    assert len(listed) == 1 and lost_id in listed[0] and '"reason": "missing"' in listed[0]

    assert behind(es, index_alias) == [reembed_index_name(index_alias, models["moved"])]
    assert not es.indices.exists(index=concrete_name(index_alias)), "the old index is deleted after the switch"
    assert meta(es, index_alias)["model"] == models["moved"] and meta(es, index_alias)["dims"] == 512
    assert stored_model(es, index_alias) == models["moved"]
    after = all_docs(es, index_alias)
    assert after.keys() == before.keys(), "every image is there, the one without its original too"
    embedder = Embedder(models["moved"], crawled["IMGSEARCH_TEXT_MODEL"], device="cpu")
    for image_id, doc in after.items():
        old = before[image_id]
        assert {k: v for k, v in doc.items() if k not in ("image_embedding", "model")} == \
            {k: v for k, v in old.items() if k not in ("image_embedding", "model")}, "metadata and hashes copied"
        if image_id == lost_id:
            assert "image_embedding" not in doc and doc["model"] is None
            continue
        assert doc["model"] == models["moved"]
        loaded = imaging.load_image(Path(store, doc["relative_path"]).read_bytes(), max_bytes=1 << 30,
                                    max_pixels=10**8, min_width=1, min_height=1)
        assert cosine(doc["image_embedding"], embedder.embed_images([loaded.image])[0]) > 0.999
        assert cosine(doc["image_embedding"], old["image_embedding"]) < 0.999, "a vector of the new model"
    assert all_docs(es, sources_alias(index_alias)) == sources_before
    assert all_docs(es, urls_alias(index_alias)) == urls_before

    searcher = Searcher(load_settings({**crawled, "IMGSEARCH_IMAGE_MODEL": models["moved"]}))
    try:
        some_id = sorted(before)[3]
        data = Path(store, before[some_id]["relative_path"]).read_bytes()
        response = searcher.search_image(data, k=5, index=index_alias)
        assert response["results"][0]["image_id"] == some_id and response["results"][0]["match"] == "exact"
        semantic = [r for r in response["results"] if r["match"] == "semantic"]
        assert len(semantic) == 4 and lost_id not in {r["image_id"] for r in semantic}
        lost_answer = searcher.search_image(Path(original).read_bytes(), k=5, index=index_alias)
        assert lost_answer["results"][0]["image_id"] == lost_id, "still found as an exact copy"
    finally:
        searcher.close()

    # The original is back: the same command embeds, in place, just the image that has none.
    status, out, err = cli("reembed", "--model", models["moved"], "--index", index_alias)
    assert status == 0, err
    assert "1 image(s) without a vector embedded now" in out
    assert behind(es, index_alias) == [reembed_index_name(index_alias, models["moved"])]
    repaired = all_docs(es, index_alias)[lost_id]
    assert repaired["model"] == models["moved"] and len(repaired["image_embedding"]) == 512
    assert {k: v for k, v in repaired.items() if k not in ("image_embedding", "model")} == \
        {k: v for k, v in after[lost_id].items() if k not in ("image_embedding", "model")}


class Interrupted(Exception):
    pass


class InterruptAfter:
    """Stored originals that stop (as Ctrl-C would) after `chunks` chunks have been embedded."""

    def __init__(self, originals: StoredOriginals, chunks: int) -> None:
        self.originals, self.chunks = originals, chunks
        self.model, self.dims = originals.model, originals.dims

    def vectors(self, chunks):
        for n, results in enumerate(self.originals.vectors(chunks)):
            if n == self.chunks:
                raise Interrupted
            yield results


def test_an_interrupted_reembed_resumes_and_catches_up_with_crawl_writes(crawled, cli, es, models, index_alias):
    status, _, err = cli("reembed", "--model", models["moved"], "--index", index_alias)  # the state the test above
    assert status == 0, err                                                                # leaves, if run alone
    old = behind(es, index_alias)[0]
    before = all_docs(es, index_alias)
    new = reembed_index_name(index_alias, models["small"])
    settings = load_settings(crawled)
    originals = StoredOriginals(Embedder(models["small"], settings.get("IMGSEARCH_TEXT_MODEL"), device="cpu"),
                                Path(crawled["FILES_STORE"]), max_pixels=10**8)
    try:
        with pytest.raises(Interrupted):
            reembed(es, index_alias, InterruptAfter(originals, 1), chunk=3)
        assert behind(es, index_alias) == [old], "nothing is switched before the end"
        es.indices.refresh(index=new)
        assert es.count(index=new)["count"] == 3, "the first chunk is written"
        assert meta(es, new)["reembed"]["from"] == old

        # Meanwhile a crawl writes to the index in use: a new image, and a known one seen on another domain.
        es.index(index=index_alias, id="x", document={"image_id": "x"}, refresh=True)  # it takes writes
        es.delete(index=index_alias, id="x", refresh=True)
        data = encode(photo_like(4321, 200, 150))
        sha = hashlib.sha256(data).hexdigest()
        path = Path(crawled["FILES_STORE"]) / relative_path_for(sha, "jpeg")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        now = utc_now()
        vector = np.ones(512, dtype=np.float32) / np.sqrt(512)
        es.index(index=index_alias, id=sha, document={
            "image_id": sha, "sha256": sha, "relative_path": relative_path_for(sha, "jpeg"), "width": 200,
            "height": 150, "format": "jpeg", "bytes": len(data), "image_url": "http://b.test/new.jpg",
            "first_seen": now, "last_seen": now, "domains": ["b.test"], "model": models["moved"],
            "image_embedding": vector.tolist()})
        copied_id = next(i for i in sorted(before) if es.exists(index=new, id=i))
        es.update(index=index_alias, id=copied_id, doc={"last_seen": now, "domains": ["127.0.0.1", "b.test"]},
                  refresh=True)

        report = reembed(es, index_alias, originals, chunk=3)
    finally:
        originals.close()
    assert report.outcome == "switched" and report.previous == old and report.index == new
    assert report.kept == 3, "what the interrupted run wrote is not embedded again"
    assert report.embedded == IMAGES + 1 - 3 and report.documents == IMAGES + 1 and report.without_vector == 0
    assert behind(es, index_alias) == [new] and not es.indices.exists(index=old)
    assert meta(es, index_alias)["dims"] == 256 and meta(es, index_alias)["model"] == models["small"]
    after = all_docs(es, index_alias)
    assert after.keys() == set(before) | {sha}
    assert after[copied_id]["domains"] == ["127.0.0.1", "b.test"] and after[copied_id]["last_seen"] == now, \
        "a document updated after it was copied is caught up"
    assert after[sha]["domains"] == ["b.test"] and len(after[sha]["image_embedding"]) == 256
    assert all(len(doc["image_embedding"]) == 256 and doc["model"] == models["small"] for doc in after.values())
    es.index(index=index_alias, id="x", document={"image_id": "x"}, refresh=True)  # the alias takes writes
    es.delete(index=index_alias, id="x", refresh=True)


def test_an_index_of_that_name_that_is_not_our_copy_is_refused(es, index_alias, crawled):
    class Fake:
        model, dims = "fake-model", 512

        def vectors(self, chunks):
            raise AssertionError("nothing is embedded")

    stale = reembed_index_name(index_alias, "fake-model")
    es.indices.create(index=stale)
    try:
        with pytest.raises(IndexConflict, match="is not an unfinished re-embedding"):
            reembed(es, index_alias, Fake())
    finally:
        es.indices.delete(index=stale)


def test_a_running_search_notices_its_index_reembedded_with_another_model(crawled, cli, es, models, index_alias):
    from fastapi.testclient import TestClient

    from web.app import create_app

    status, _, err = cli("reembed", "--model", models["moved"], "--index", index_alias)  # as the first test leaves it
    assert status == 0, err
    some = sorted(all_docs(es, index_alias).items())[0][1]
    data = Path(crawled["FILES_STORE"], some["relative_path"]).read_bytes()
    query = {"files": {"image": ("q.jpg", data, "image/jpeg")}, "data": {"k": "3"}}
    moved = Searcher(load_settings({**crawled, "IMGSEARCH_IMAGE_MODEL": models["moved"]}))
    try:
        with TestClient(create_app(load_settings(crawled))) as served:  # `imgsearch serve` with the crawl's model
            assert moved.search_image(data, k=3, index=index_alias)["results"][0]["match"] == "exact"
            refused = served.post("/api/search", **query)
            assert refused.status_code == 503 and "vectors of two models cannot be compared" in refused.text

            status, _, err = cli("reembed", "--model", crawled["IMGSEARCH_IMAGE_MODEL"], "--index", index_alias)
            assert status == 0, err
            answer = served.post("/api/search", **query)
            assert answer.status_code == 200, answer.text
            assert answer.json()["results"][0]["match"] == "exact", "the server follows the index, no restart"
            with pytest.raises(ModelMismatch, match="imgsearch reembed") as refusal:
                moved.search_image(data, k=3, index=index_alias)
            assert models["moved"] in str(refusal.value) and crawled["IMGSEARCH_IMAGE_MODEL"] in str(refusal.value)
    finally:
        moved.close()
