"""What indexing an image costs Elasticsearch, and what its crop hashes' vector index buys: prints figures, not a test.

    python bench/index_cost.py [--images 1500] [--recall-images 20000] [--queries 300]

Part 1 bulk-writes N image documents shaped as the crawl writes them (``pipelines.indexing.image_document``: a
512-d unit vector, 20 crop hashes) in requests of 32, as creates, into scratch indices with the product's mapping
(``index_setup.mappings.image_mapping``) and with variants of it, then refreshes, and prints the node's CPU per
document (read from /proc, so the local node of ``imgsearch es start`` only; with ES_URL set, wall time only):

  as built        the mapping as it is: int8_hnsw for the CLIP vector, HNSW graphs for the crop hashes;
  no hashes       the same documents without crop hashes;
  flat hashes     the hashes as ``flat`` (brute-force) bit vectors, no graph;
  hashes ef 32    the hashes' graphs built with ef_construction 32 instead of 100.

Part 2 writes M images' 20 crop hashes each (random 64-bit image hashes, each crop's hash that image's with about
5 bits flipped, as a real image's crops cluster around it) with the hashes indexed each of those three ways, then
queries a random stored crop hash with 4 more bits flipped through ``query.builders.near_query`` (k=10, 10 bits)
and prints the share of queries whose image comes back, with the query time; for the mapping as built, also with
num_candidates 100 instead of the product's ``NEAR_CANDIDATES``. The scratch indices are deleted.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.machine import cpu_model  # noqa: E402
from bench.pipeline import es_pid, process_cpu_seconds  # noqa: E402

BULK_SIZE = 32
DIMS = 512  # clip-ViT-B-32's vectors, the default image model's
CROPS = 20
CROP_FLIP = 0.08  # per bit: a crop's hash lies about 5 bits from its image's
QUERY_FLIPS = 4


def hash_options(variant: str) -> dict[str, Any] | None:
    return {"flat hashes": {"type": "flat"},
            "hashes ef 32": {"type": "hnsw", "m": 16, "ef_construction": 32}}.get(variant)


def variant_mapping(variant: str) -> dict[str, Any]:
    from index_setup.mappings import image_mapping

    mapping = copy.deepcopy(image_mapping(DIMS))
    if options := hash_options(variant):
        mapping["properties"]["phash_crops"]["properties"]["hash"]["index_options"] = options
    return mapping


def wait_until_idle(pid: int | None, limit: float = 60.0) -> None:
    """Until the node has used under 50 ms of CPU in a second (merges done), at most `limit` seconds. The node's
    own CPU, not the machine's (bench.pipeline.wait_until_quiet): its CPU is read across this wait, and anything
    else on the machine would only lengthen the wait and the node's idle CPU counted in it."""
    deadline = time.monotonic() + limit
    last = process_cpu_seconds(pid)
    while pid and time.monotonic() < deadline:
        time.sleep(1.0)
        now = process_cpu_seconds(pid)
        if now - last < 0.05:
            return
        last = now


def documents(count: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    from pipelines.indexing import image_document, utc_now

    vectors = rng.standard_normal((count, DIMS)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    hashes = rng.integers(0, 256, (count, CROPS, 8), dtype=np.uint8)
    now = utc_now()
    docs = []
    for i in range(count):
        image_id = uuid.uuid4().hex * 2
        item = {"image_id": image_id, "image_embedding": vectors[i].tolist(), "image_name": f"{i}.jpg",
                "relative_path": f"full/{image_id[:2]}/{image_id}.jpg", "thumbnail_path": f"thumbs/{image_id}.jpg",
                "image_url": f"http://127.0.0.1/{i}.jpg", "width": 1600, "height": 1200, "format": "jpeg",
                "bytes": 300_000, "model": "bench", "phash": hashes[i, 0].tobytes().hex(),
                "phash_crops": [{"crop": f"crop{k}", "hash": hashes[i, k].tobytes().hex()} for k in range(CROPS)]}
        docs.append(image_document(item, now, ["127.0.0.1"]))
    return docs


def scratch_index(client, mapping: dict[str, Any]) -> str:
    name = f"bench-index-cost-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=name, mappings=mapping, settings={"number_of_shards": 1, "number_of_replicas": 0})
    return name


def write_cost(client, pid: int | None, variant: str, docs: list[dict[str, Any]], show: bool = True) -> None:
    index = scratch_index(client, variant_mapping(variant))
    try:
        wait_until_idle(pid)
        cpu, started = process_cpu_seconds(pid), time.perf_counter()
        for i in range(0, len(docs), BULK_SIZE):
            operations = []
            for doc in docs[i:i + BULK_SIZE]:
                operations += [{"create": {"_index": index, "_id": doc["image_id"]}}, doc]
            response = client.bulk(operations=operations)
            if response["errors"]:
                raise SystemExit(f"{variant}: bulk errors, e.g. {response['items'][0]}")
        client.indices.refresh(index=index)
        wall = time.perf_counter() - started
        wait_until_idle(pid)
        used = process_cpu_seconds(pid) - cpu
        figure = f"{1000 * used / len(docs):5.2f} ms of Elasticsearch CPU per image, " if pid else ""
        if show:
            print(f"  {variant:14s} {figure}{1000 * wall / len(docs):5.2f} ms wall per image",
                  flush=True)
    finally:
        client.indices.delete(index=index)


def recall(client, variant: str, images: int, queries: int, rng: np.random.Generator) -> None:
    from elasticsearch import helpers

    from query.builders import NEAR_CANDIDATES, near_query

    options = hash_options(variant) or {"type": "hnsw", "m": 16, "ef_construction": 100}
    mapping = {"properties": {"phash_crops": {"type": "nested", "properties": {
        "crop": {"type": "keyword"},
        "hash": {"type": "dense_vector", "element_type": "bit", "dims": 64, "index": True, "similarity": "l2_norm",
                 "index_options": options}}}}}
    base = rng.integers(0, 2, (images, 64), dtype=np.uint8)
    crops = base[:, None, :] ^ (rng.random((images, CROPS, 64)) < CROP_FLIP)
    crops[:, 0] = base
    packed = np.packbits(crops, axis=2)
    index = scratch_index(client, mapping)
    try:
        started = time.perf_counter()
        helpers.bulk(client, ({"_index": index, "_id": str(i), "_source": {"phash_crops": [
            {"crop": str(k), "hash": packed[i, k].tobytes().hex()} for k in range(CROPS)]}} for i in range(images)),
            chunk_size=BULK_SIZE)
        client.indices.refresh(index=index)
        written = time.perf_counter() - started
        segments = len(client.cat.segments(index=index, format="json"))
        print(f"  {variant}: written in {written:.0f} s, {segments} segments", flush=True)
        asked = []
        for image in rng.choice(images, queries, replace=False):
            query = crops[image, rng.integers(CROPS)].copy()
            query[rng.choice(64, QUERY_FLIPS, replace=False)] ^= 1
            asked.append((image, np.packbits(query).tobytes().hex()))
        for candidates in ((100, NEAR_CANDIDATES) if variant == "as built" else (NEAR_CANDIDATES,)):
            found, times = 0, []
            for image, query_hex in asked:
                knn = {**near_query(query_hex, 10, 10), "num_candidates": candidates}
                started = time.perf_counter()
                hits = client.search(index=index, knn=knn, size=10, source=False)["hits"]["hits"]
                times.append(time.perf_counter() - started)
                found += any(hit["_id"] == str(image) for hit in hits)
            times.sort()
            print(f"    num_candidates {candidates}: found {found / queries:.3f}; query p50 "
                  f"{1000 * times[len(times) // 2]:.1f} ms, p90 {1000 * times[int(len(times) * 0.9)]:.1f} ms",
                  flush=True)
    finally:
        client.indices.delete(index=index)


def main(argv: list[str] | None = None) -> int:
    from crawler.config import load_settings
    from index_setup.client import es_client

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500, help="image documents per variant in part 1")
    parser.add_argument("--recall-images", type=int, default=20_000, help="images (x 20 hashes) in part 2; 0: skip")
    parser.add_argument("--queries", type=int, default=300, help="near-duplicate queries per variant in part 2")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    pid = es_pid()
    client = es_client(load_settings()).options(request_timeout=300)
    rng = np.random.default_rng(args.seed)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Elasticsearch pid {pid or 'unknown (ES_URL)'}")
    try:
        print(f"Part 1: {args.images} image documents in bulk requests of {BULK_SIZE}, then a refresh")
        with_hashes = documents(args.images, rng)
        without = [{**doc, "phash_crops": []} for doc in with_hashes]
        write_cost(client, pid, "as built", with_hashes, show=False)  # warms the node's JIT up
        for variant in ("as built", "no hashes", "flat hashes", "hashes ef 32", "as built"):
            write_cost(client, pid, variant, without if variant == "no hashes" else with_hashes)
        if args.recall_images:
            print(f"Part 2: {args.recall_images} images x {CROPS} crop hashes; {args.queries} queries, each a stored "
                  f"crop hash with {QUERY_FLIPS} bits flipped (k=10, within 10 bits)")
            for variant in ("as built", "flat hashes", "hashes ef 32"):
                recall(client, variant, args.recall_images, args.queries, rng)
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
