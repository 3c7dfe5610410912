"""Bytes per image in Elasticsearch, on disk and in memory, and one node's bulk rate: prints figures, not a test.

    python bench/sizing.py [--images 100000] [--types int8_hnsw,bbq_hnsw] [--occurrences 20000]

For each vector index type, a scratch image index (the project's mapping, with only the vector's index_options
type changed; 1 shard, 0 replicas) is filled with N documents shaped as the crawl writes them: a 512-d unit
vector (in clusters, as photos are), a perceptual hash and 16 crop hashes (the nested 64-bit vectors of the
near-duplicate channel), URLs, sizes and dates. The bulk load is timed (refresh off, one client thread per core
of this machine, the client generating documents on the same machine), the index is force-merged to one segment,
and the figures come from Elasticsearch's own statistics:

  - disk: the store per image, and per field (the disk-usage analyser, POST <index>/_disk_usage);
  - memory: what kNN search wants in the page cache: of the image vector field, everything but the raw float
    vectors (its quantized vectors and HNSW graph: the raw floats are read only for the k x oversample rescored
    candidates); of the crop hashes (64-bit vectors, 17 graph nodes per image), all of it.
  - the sources and urls indices: bytes per occurrence and per image URL (N documents each, --occurrences).

ES_URL names the cluster (else the local node of `imgsearch es start`); every index made here is deleted.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import os
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.machine import cpu_model  # noqa: E402

DIMS = 512
CROPS = 16
RAW_FLOAT_BYTES = DIMS * 4  # a float32 vector, what the .vec file keeps of each image




def unit_vectors(rng: np.random.Generator, centres: np.ndarray, count: int) -> np.ndarray:
    picks = centres[rng.integers(0, len(centres), count)]
    vectors = picks + rng.normal(0, 0.35 / np.sqrt(DIMS), (count, DIMS))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def image_docs(count: int, seed: int, chunk: int = 1000):
    """(id, document) pairs as pipelines.indexing.image_document writes them."""
    from pipelines.indexing import image_document

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(1000, DIMS))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    now = "2026-01-01T00:00:00.000Z"
    for start in range(0, count, chunk):
        vectors = unit_vectors(rng, centres, min(chunk, count - start))
        hashes = rng.integers(0, 2**63, (len(vectors), CROPS + 1), dtype=np.int64)
        for i, vector in enumerate(vectors):
            n = start + i
            sha = hashlib.sha256(f"image {seed} {n}".encode()).hexdigest()
            host = f"site{n % 5000}.example.org"
            item = {"image_id": sha, "image_embedding": [round(float(v), 7) for v in vector],
                    "image_name": f"photo-{n}.jpg", "relative_path": f"full/{sha[:2]}/{sha}.jpg",
                    "thumbnail_path": f"thumbs/{sha[:2]}/{sha}.jpg",
                    "image_url": f"https://{host}/images/2025/{n}/photo-{n}.jpg",
                    "width": 1600, "height": 1200, "format": "jpeg", "bytes": 350_000 + n % 1000,
                    "model": "sentence-transformers/clip-ViT-B-32", "phash": f"{int(hashes[i, 0]):016x}",
                    "phash_crops": [{"crop": f"crop_{c}", "hash": f"{int(h):016x}"}
                                    for c, h in enumerate(hashes[i, 1:])]}
            yield sha, image_document(item, now, [host])


def occurrence_docs(count: int):
    from pipelines.indexing import occurrence_id, source_document, url_id

    now = "2026-01-01T00:00:00.000Z"
    for n in range(count):
        sha = hashlib.sha256(f"image {n}".encode()).hexdigest()
        item = {"image_id": sha, "image_url": f"https://cdn{n % 50}.example.org/images/2025/{n}/photo-{n}.jpg",
                "page_url": f"https://site{n % 5000}.example.org/articles/2025/some-article-title-{n}.html",
                "page_title": f"Some article title number {n} - Example site", "alt_text": f"A photo of thing {n}"}
        source = (occurrence_id(item["image_url"], item["page_url"]), source_document(item, now))
        url = (url_id(item["image_url"]), {"image_url": item["image_url"], "image_id": sha, "fetched": now,
                                           "etag": f'"{sha[:16]}"', "last_modified": "Mon, 01 Jan 2026 00:00:00 GMT"})
        yield source, url


def bulk(client, index: str, docs, threads: int) -> tuple[int, float]:
    from elasticsearch.helpers import parallel_bulk

    actions = ({"_op_type": "index", "_index": index, "_id": doc_id, "_source": doc} for doc_id, doc in docs)
    started = time.perf_counter()
    done = 0
    for ok, info in parallel_bulk(client, actions, thread_count=threads, chunk_size=500, raise_on_error=False,
                                  request_timeout=300):
        if not ok:
            raise SystemExit(f"bulk failed: {info}")
        done += 1
    return done, time.perf_counter() - started


def create(client, index: str, mappings: dict) -> None:
    # No compound files, so that the statistics break the store down by Lucene file kind.
    client.indices.create(index=index, mappings=mappings, settings={
        "number_of_shards": 1, "number_of_replicas": 0, "refresh_interval": "-1", "index.compound_format": False})


def settle(client, index: str) -> float:
    """Refresh and force-merge to one segment; returns the seconds the merge took."""
    client.indices.refresh(index=index)
    started = time.perf_counter()
    client.options(request_timeout=3600).indices.forcemerge(index=index, max_num_segments=1)
    client.indices.refresh(index=index)
    return time.perf_counter() - started


def store_size(client, index: str) -> int:
    return int(client.indices.stats(index=index, metric="store")["indices"][index]["primaries"]["store"][
        "size_in_bytes"])


def field_sizes(client, index: str) -> dict[str, dict[str, int]]:
    """Bytes per field and kind (knn_vectors, stored_fields, doc_values, inverted_index, points, norms)."""
    usage = client.perform_request("POST", f"/{index}/_disk_usage", params={"run_expensive_tasks": "true"},
                                   headers={"accept": "application/json"}).body
    return {name: {k.removesuffix("_in_bytes"): int(v) for k, v in f.items() if k.endswith("_in_bytes") and v}
            for name, f in usage[index]["fields"].items()}


def main(argv: list[str] | None = None) -> int:
    from crawler.config import load_settings
    from index_setup.client import display_url, es_client
    from index_setup.mappings import image_mapping, sources_mapping, urls_mapping

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000, help="image documents per index (default 100000)")
    parser.add_argument("--types", default="int8_hnsw,bbq_hnsw", help="vector index types to measure")
    parser.add_argument("--occurrences", type=int, default=20_000,
                        help="documents in the sources and urls indices (default 20000; 0: skip)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="bulk client threads")
    args = parser.parse_args(argv)

    settings = load_settings()
    client = es_client(settings).options(request_timeout=600)
    health = client.cluster.health()
    nodes = client.nodes.info(metric="os,jvm")["nodes"]
    print(f"Elasticsearch at {display_url(settings)}: {health['number_of_nodes']} node(s); "
          + "; ".join(f"{n['name']}: {n['os'].get('allocated_processors')} processors, heap "
                      f"{n['jvm']['mem']['heap_max_in_bytes'] / 2**30:.1f} GiB" for n in nodes.values()))
    print(f"CPU {cpu_model()}, {os.cpu_count()} logical cores; {args.images} images per index, bulk with "
          f"{args.threads} client thread(s), chunks of 500")
    print()
    run = uuid.uuid4().hex[:8]
    for kind in [t.strip() for t in args.types.split(",") if t.strip()]:
        index = f"bench-sizing-{kind.replace('_', '-')}-{run}"
        mapping = copy.deepcopy(image_mapping(DIMS, "sentence-transformers/clip-ViT-B-32"))
        mapping["properties"]["image_embedding"]["index_options"] = {"type": kind}
        create(client, index, mapping)
        try:
            done, seconds = bulk(client, index, image_docs(args.images, seed=1), args.threads)
            merge = settle(client, index)
            store = store_size(client, index)
            fields = field_sizes(client, index)
        finally:
            client.indices.delete(index=index)
        image_knn = fields["image_embedding"]["knn_vectors"]
        crops_knn = fields["phash_crops.hash"]["knn_vectors"]
        hot = image_knn - RAW_FLOAT_BYTES * done + crops_knn
        source = fields.get("_source", {}).get("stored_fields", 0)
        print(f"{kind}: bulk {done} images in {seconds:.0f} s = {done / seconds:.0f} images/s into one node, "
              f"force-merge to one segment {merge:.0f} s")
        print(f"    disk {store / done:.0f} B/image ({store / 2**20:.0f} MiB): image vector {image_knn / done:.0f} "
              f"(raw floats {RAW_FLOAT_BYTES}, quantized + graph {image_knn / done - RAW_FLOAT_BYTES:.0f}), crop "
              f"hashes + graph {crops_knn / done:.0f}, _source {source / done:.0f}, the rest "
              f"{(store - image_knn - crops_knn - source) / done:.0f}")
        print(f"    in the page cache for kNN (quantized vectors and graphs): {hot / done:.0f} B/image "
              f"({hot / 2**20:.0f} MiB), of which the image vector's {(hot - crops_knn) / done:.0f}")
    if args.occurrences:
        sources, urls = f"bench-sizing-sources-{run}", f"bench-sizing-urls-{run}"
        create(client, sources, sources_mapping())
        create(client, urls, urls_mapping())
        try:
            pairs = list(occurrence_docs(args.occurrences))
            done, seconds = bulk(client, sources, (s for s, _ in pairs), args.threads)
            bulk(client, urls, (u for _, u in pairs), args.threads)
            settle(client, sources)
            settle(client, urls)
            source_bytes = store_size(client, sources)
            url_bytes = store_size(client, urls)
        finally:
            client.indices.delete(index=f"{sources},{urls}")
        print(f"sources: {source_bytes / done:.0f} B/occurrence on disk (bulk {done / seconds:.0f} docs/s); "
              f"urls: {url_bytes / done:.0f} B/image URL")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
