"""The two-index schema against the real Elasticsearch node."""

from __future__ import annotations

import numpy as np
import pytest

from index_setup.indices import IndexConflict, IndexMissing, ensure_indices, index_info, require_indices
from index_setup.mappings import concrete_name, image_mapping, sources_alias


def _unit(vector):
    vector = np.asarray(vector, dtype=np.float32)
    return (vector / np.linalg.norm(vector)).tolist()


def _basis(i, dims=512):
    v = np.zeros(dims, dtype=np.float32)
    v[i] = 1.0
    return v


def test_create_twice_is_a_no_op(es, index_alias):
    assert ensure_indices(es, index_alias, model="m") == {index_alias: "created",
                                                         sources_alias(index_alias): "created"}
    first = es.indices.get(index=index_alias).body
    assert ensure_indices(es, index_alias, model="m") == {index_alias: "exists",
                                                         sources_alias(index_alias): "exists"}
    assert es.indices.get(index=index_alias).body == first
    require_indices(es, index_alias)


def test_mappings_are_as_specified(es, index_alias):
    ensure_indices(es, index_alias, model="m")
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
    assert meta["schema_version"] == 1 and meta["dims"] == 512 and meta["model"] == "m"


def test_conflicting_index_is_refused_untouched(es, index_alias):
    alias = f"{index_alias}-conflict"
    mapping = image_mapping(dims=256)
    mapping["properties"]["width"] = {"type": "keyword"}
    es.indices.create(index=alias, mappings=mapping)
    before = es.indices.get(index=alias).body
    try:
        with pytest.raises(IndexConflict) as excinfo:
            ensure_indices(es, alias)
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
    ensure_indices(es, index_alias)
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
    ensure_indices(es, index_alias)
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
