"""The three-index schema, and its upgrade from an older one, against the real Elasticsearch node."""

from __future__ import annotations

import numpy as np
import pytest

from index_setup.indices import (
    IndexConflict,
    IndexMissing,
    IndexOutdated,
    delete_indices,
    ensure_indices,
    index_info,
    require_indices,
    upgrade_indices,
)
from index_setup.mappings import (
    SCHEMA_VERSION,
    concrete_name,
    image_mapping,
    index_settings,
    sources_alias,
    sources_mapping,
    urls_alias,
)
from tests.cli_runs import in_process

DIMS = 512  # the size of this module's vectors


def _unit(vector):
    vector = np.asarray(vector, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def _basis(i, dims=DIMS):
    v = np.zeros(dims, dtype=np.float32)
    v[i] = 1.0
    return v


def test_create_twice_is_a_no_op(es, index_alias):
    names = (index_alias, sources_alias(index_alias), urls_alias(index_alias))
    assert ensure_indices(es, index_alias, dims=DIMS, model="m") == dict.fromkeys(names, "created")
    first = es.indices.get(index=index_alias).body
    assert ensure_indices(es, index_alias, dims=DIMS, model="m") == dict.fromkeys(names, "exists")
    assert es.indices.get(index=index_alias).body == first
    require_indices(es, index_alias)


def test_mappings_are_as_specified(es, index_alias):
    ensure_indices(es, index_alias, dims=DIMS, model="m")
    images = es.indices.get_mapping(index=index_alias).body
    assert list(images) == [concrete_name(index_alias)]
    props = images[concrete_name(index_alias)]["mappings"]["properties"]
    vector = props["image_embedding"]
    assert vector["type"] == "dense_vector"
    assert vector["dims"] == 512
    assert vector["similarity"] == "cosine"
    assert vector["index_options"]["type"] == "int8_hnsw"
    for field in ("image_id", "image_name", "relative_path", "image_url", "sha256", "format", "domains", "model"):
        assert props[field]["type"] == "keyword", field
    assert props["width"]["type"] == props["height"]["type"] == "integer"
    assert props["first_seen"]["type"] == props["last_seen"]["type"] == "date"
    sources = es.indices.get_mapping(index=sources_alias(index_alias)).body
    sprops = next(iter(sources.values()))["mappings"]["properties"]
    for field in ("image_id", "image_url", "page_url", "domain"):
        assert sprops[field]["type"] == "keyword", field
    for field in ("page_title", "alt_text"):
        assert sprops[field]["type"] == "text"
        assert sprops[field]["fields"]["keyword"]["type"] == "keyword"
    meta = index_info(es, index_alias)[0]["meta"]
    assert meta["schema_version"] == SCHEMA_VERSION == 2 and meta["dims"] == 512 and meta["model"] == "m"
    crops = props["phash_crops"]
    assert crops["type"] == "nested" and props["phash"]["type"] == "keyword"
    assert crops["properties"]["hash"] == {"type": "dense_vector", "dims": 64, "index": True,
                                           "similarity": "l2_norm", "element_type": "bit"}
    urls = next(iter(es.indices.get_mapping(index=urls_alias(index_alias)).body.values()))["mappings"]
    assert urls["properties"]["fetched"]["type"] == "date" and urls["properties"]["image_id"]["type"] == "keyword"


def test_conflicting_index_is_refused_untouched(es, index_alias):
    alias = f"{index_alias}-conflict"
    mapping = image_mapping(dims=256)
    mapping["properties"]["width"] = {"type": "keyword"}
    es.indices.create(index=alias, mappings=mapping)
    before = es.indices.get(index=alias).body
    try:
        with pytest.raises(IndexConflict) as excinfo:
            ensure_indices(es, alias, dims=512)
        message = str(excinfo.value)
        assert "image_embedding: dims 256, expected 512" in message
        assert "width: type keyword, expected integer" in message
        assert es.indices.get(index=alias).body == before
        assert not es.indices.exists(index=sources_alias(alias))
    finally:
        es.indices.delete(index=alias)


def test_missing_index_is_reported(es, index_alias):
    with pytest.raises(IndexMissing, match="imgsearch index create"):
        require_indices(es, f"{index_alias}-absent")


def test_knn_round_trip_returns_nearest_first(es, index_alias):
    ensure_indices(es, index_alias, dims=DIMS)
    docs = {
        "a": _unit(_basis(0)),
        "b": _unit(_basis(1)),
        "c": _unit(_basis(0) + 0.5 * _basis(1)),
    }
    for image_id, vector in docs.items():
        es.index(index=index_alias, id=image_id, document={
            "image_id": image_id, "image_name": f"{image_id}.jpg", "relative_path": f"full/{image_id}.jpg",
            "image_embedding": vector, "domains": ["example.org"]})
    es.indices.refresh(index=index_alias)
    query = _unit(_basis(0) + 0.1 * _basis(1))
    result = es.search(index=index_alias, knn={"field": "image_embedding", "query_vector": query, "k": 3,
                                               "num_candidates": 10},
                       fields=["image_id", "image_name", "relative_path"], source=False)
    hits = result["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["a", "c", "b"]
    assert hits[0]["fields"] == {"image_id": ["a"], "image_name": ["a.jpg"], "relative_path": ["full/a.jpg"]}
    assert hits[0]["_score"] > hits[1]["_score"] > hits[2]["_score"]


def test_sources_index_accepts_occurrences(es, index_alias):
    ensure_indices(es, index_alias, dims=DIMS)
    sources = sources_alias(index_alias)
    for page in ("http://a.test/1", "http://a.test/2"):
        es.index(index=sources, document={
            "image_id": "x", "image_url": "http://a.test/x.jpg", "page_url": page, "page_title": "Une page",
            "alt_text": "un chat noir", "domain": "a.test", "first_seen": "2026-01-01T00:00:00Z",
            "last_seen": "2026-01-02T00:00:00Z"})
    es.indices.refresh(index=sources)
    result = es.search(index=sources, query={"term": {"image_id": "x"}}, sort=[{"page_url": "asc"}])
    assert [h["_source"]["page_url"] for h in result["hits"]["hits"]] == ["http://a.test/1", "http://a.test/2"]
    text = es.search(index=sources, query={"match": {"alt_text": "chat"}})
    assert text["hits"]["total"]["value"] == 2


def _v1_mappings(dims=512):
    """The schema-1 mappings as the first release wrote them: no perceptual hashes, no urls index."""
    images = image_mapping(dims, "m")
    for field in ("phash", "phash_crops"):
        del images["properties"][field]
    images["_meta"]["schema_version"] = 1
    sources = sources_mapping()
    sources["_meta"]["schema_version"] = 1
    return images, sources


def test_an_older_index_is_refused_then_upgraded_without_losing_a_document(es, index_alias):
    alias = f"{index_alias}-old"
    images, sources = _v1_mappings()
    es.indices.create(index=f"{alias}-v1", mappings=images, aliases={alias: {"is_write_index": True}})
    es.indices.create(index=f"{sources_alias(alias)}-v1", mappings=sources,
                      aliases={sources_alias(alias): {"is_write_index": True}})
    try:
        for i in range(1200):  # more than one scroll page and one bulk chunk
            es.index(index=alias, id=f"img{i}", document={
                "image_id": f"img{i}", "relative_path": f"full/{i}.jpg", "image_embedding": _unit(_basis(i % 512)),
                "domains": ["a.test"], "first_seen": "2025-01-01T00:00:00Z"})
        es.index(index=sources_alias(alias), id="occ", document={"image_id": "img7", "page_url": "http://a.test/"})
        es.indices.refresh(index=f"{alias},{sources_alias(alias)}")
        before = es.indices.get(index=f"{alias}-v1").body
        with pytest.raises(IndexOutdated, match="imgsearch index upgrade"):
            ensure_indices(es, alias, model="m")
        with pytest.raises(IndexOutdated):
            require_indices(es, alias)
        assert es.indices.get(index=f"{alias}-v1").body == before, "a refusal changes nothing"

        def add_hash(doc):
            return {**doc, "phash": "00000000ffffffff",
                    "phash_crops": [{"crop": "whole", "hash": "00000000ffffffff"}]}

        assert upgrade_indices(es, alias, transform_image=add_hash, progress=lambda _: None) == {
            alias: "upgraded", sources_alias(alias): "upgraded", urls_alias(alias): "created"}
        assert list(es.indices.get_alias(name=alias).body) == [concrete_name(alias)]
        assert not es.indices.exists(index=f"{alias}-v1")
        assert es.count(index=alias)["count"] == 1200 and es.count(index=sources_alias(alias))["count"] == 1
        doc = es.get(index=alias, id="img7")["_source"]
        assert doc["first_seen"] == "2025-01-01T00:00:00Z" and doc["phash"] == "00000000ffffffff"
        require_indices(es, alias)
        assert ensure_indices(es, alias, model="m")[alias] == "exists"
        near = es.search(index=alias, knn={"field": "phash_crops.hash", "query_vector": "00000000fffffffe", "k": 1,
                                           "num_candidates": 10, "similarity": 10})
        assert near["hits"]["total"]["value"] >= 1
        es.index(index=alias, id="new", document={"image_id": "new"}, refresh=True)  # the alias takes writes
        assert upgrade_indices(es, alias, progress=lambda _: None)[alias] == "current"
    finally:
        for name in (alias, sources_alias(alias), urls_alias(alias)):
            es.indices.delete(index=f"{name}-v1,{name}-v2", ignore_unavailable=True)


def test_a_failed_upgrade_leaves_the_old_index_in_use_and_writable(es, index_alias):
    alias = f"{index_alias}-fail"
    images, sources = _v1_mappings()
    es.indices.create(index=f"{alias}-v1", mappings=images, aliases={alias: {"is_write_index": True}})
    es.indices.create(index=f"{sources_alias(alias)}-v1", mappings=sources,
                      aliases={sources_alias(alias): {"is_write_index": True}})
    try:
        es.index(index=alias, id="a", document={"image_id": "a"}, refresh=True)

        def broken(doc):
            return {**doc, "phash": "not hex", "phash_crops": [{"crop": "whole", "hash": "zz"}]}

        with pytest.raises(IndexConflict, match="copying"):
            upgrade_indices(es, alias, transform_image=broken, progress=lambda _: None)
        assert list(es.indices.get_alias(name=alias).body) == [f"{alias}-v1"]
        assert not es.indices.exists(index=concrete_name(alias))
        es.index(index=alias, id="b", document={"image_id": "b"}, refresh=True)  # writable again
        assert es.count(index=alias)["count"] == 2
    finally:
        for name in (alias, sources_alias(alias), urls_alias(alias)):
            es.indices.delete(index=f"{name}-v1,{name}-v2", ignore_unavailable=True)


def test_fields_new_in_the_current_schema_are_added_in_place(es, index_alias):
    alias = f"{index_alias}-additive"
    mapping = image_mapping(512, "m")
    del mapping["properties"]["thumbnail_path"]
    es.indices.create(index=concrete_name(alias), mappings=mapping, aliases={alias: {"is_write_index": True}})
    try:
        es.index(index=alias, id="a", document={"image_id": "a"}, refresh=True)
        assert ensure_indices(es, alias, model="m")[alias] == "exists"
        props = es.indices.get_mapping(index=alias).body[concrete_name(alias)]["mappings"]["properties"]
        assert props["thumbnail_path"] == {"type": "keyword"}
        assert es.get(index=alias, id="a")["_source"] == {"image_id": "a"}
    finally:
        delete_indices(es, alias)


def test_an_index_of_other_dims_is_used_as_it_is_when_no_dims_are_asked(es, index_alias):
    alias = f"{index_alias}-dims"
    try:
        ensure_indices(es, alias, dims=256, model="m256")
        assert ensure_indices(es, alias, model="m256")[alias] == "exists"
        with pytest.raises(IndexConflict, match="dims 256, expected 512"):
            ensure_indices(es, alias, dims=512, model="m256")
    finally:
        delete_indices(es, alias)


def test_the_models_dims_are_asked_for_only_to_create_the_image_index(es, index_alias):
    alias = f"{index_alias}-asked"
    asked = []

    def dims():  # stands for loading the model
        asked.append(alias)
        return 384

    try:
        with pytest.raises(ValueError, match="vector dims"):
            ensure_indices(es, alias, model="m384")
        assert [row["index"] for row in index_info(es, alias)] == [None] * 3, "nothing is created without dims"
        assert ensure_indices(es, alias, dims=dims, model="m384")[alias] == "created"
        assert ensure_indices(es, alias, dims=dims, model="m384")[alias] == "exists"
        assert asked == [alias]
        assert index_info(es, alias)[0]["meta"]["dims"] == 384
    finally:
        delete_indices(es, alias)


def test_index_info_counts_images_not_their_nested_crop_hashes(es, index_alias):
    alias = f"{index_alias}-count"
    try:
        ensure_indices(es, alias, dims=DIMS, model="m")
        crops = [{"crop": f"c{i}", "hash": "00000000ffffffff"} for i in range(16)]
        es.index(index=alias, id="a", document={"image_id": "a", "phash_crops": crops}, refresh=True)
        assert index_info(es, alias)[0]["docs"] == 1
    finally:
        delete_indices(es, alias)


def _image_mappings(es, alias):
    return next(iter(es.indices.get_mapping(index=alias).body.values()))["mappings"]


def test_index_create_sizes_the_image_index_for_the_configured_model(es, index_alias, standin_models,
                                                                     wide_standin_models, monkeypatch, capsys):
    alias = f"{index_alias}-wide"
    wide = str(wide_standin_models[0])
    cli = in_process(monkeypatch, capsys, {"IMGSEARCH_INDEX": alias, "IMGSEARCH_IMAGE_MODEL": wide,
                                           "HF_HUB_OFFLINE": "1"})
    try:
        status, out, err = cli("index", "create")
        assert status == 0, err
        assert f"{alias}: created" in out
        mappings = _image_mappings(es, alias)
        assert mappings["properties"]["image_embedding"]["dims"] == mappings["_meta"]["dims"] == 768
        assert mappings["_meta"]["model"] == wide
        assert cli("index", "create")[:2] == (0, f"{alias}: exists\n{sources_alias(alias)}: exists\n"
                                                 f"{urls_alias(alias)}: exists\n")
        # A model of other dims is refused on it, and nothing is changed.
        monkeypatch.setenv("IMGSEARCH_IMAGE_MODEL", str(standin_models[0]))
        status, _, err = cli("index", "create")
        assert status == 2 and f"holds vectors of the image model {wide}" in err
        assert _image_mappings(es, alias) == mappings
    finally:
        delete_indices(es, alias)


def test_index_upgrade_creates_the_urls_index_with_the_configured_shards_and_replicas(es, index_alias, tmp_path,
                                                                                     monkeypatch, capsys):
    alias = f"{index_alias}-shards"
    images, sources = _v1_mappings()
    one = index_settings(1, 0)
    es.indices.create(index=f"{alias}-v1", settings=one, mappings=images, aliases={alias: {"is_write_index": True}})
    es.indices.create(index=f"{sources_alias(alias)}-v1", settings=one, mappings=sources,
                      aliases={sources_alias(alias): {"is_write_index": True}})
    cli = in_process(monkeypatch, capsys, {"IMGSEARCH_INDEX": alias, "FILES_STORE": str(tmp_path / "store"),
                                           "IMGSEARCH_SHARDS": "2", "IMGSEARCH_REPLICAS": "1"})
    try:
        status, out, err = cli("index", "upgrade")
        assert status == 0, err
        assert f"{urls_alias(alias)}: created" in out
        urls = next(iter(es.indices.get_settings(index=urls_alias(alias)).body.values()))["settings"]["index"]
        assert (urls["number_of_shards"], urls["number_of_replicas"]) == ("2", "1")
    finally:
        for name in (alias, sources_alias(alias), urls_alias(alias)):
            es.indices.delete(index=f"{name}-v1,{name}-v2", ignore_unavailable=True)
