"""Benchmark of the image index's k-NN queries: latency and recall@k against exact search.

    python bench/query.py                                  # 100k vectors, 200 timed queries per row
    python bench/query.py --vectors 20000 --queries 100    # a quick run

Loads synthetic, deliberately hard clustered unit vectors into a scratch image index created with the
product's own `ensure_indices` (so the mapping is exactly the product's: dense_vector, cosine, int8_hnsw),
then, for each num_candidates with and without `rescore_vector` oversampling, times filter-less kNN queries
(client-side wall time and the server's `took`) and measures recall@k against numpy brute force over the same
float32 vectors; one more row per table runs with a `domains` pre-filter matching about 10 % of the documents.
The tables are printed once on the segments as loaded and once after a force-merge to one segment
(`--merge`). The scratch indices are deleted at the end, also on Ctrl-C, SIGTERM or an error.

The data: `--clusters` centres that share a common direction (as CLIP image vectors do), cluster sizes drawn
from a log-normal, members = centre + isotropic Gaussian noise such that a member's cosine to its centre is
about `--spread` (jittered per cluster). Queries are new members of those clusters, never stored vectors. In
512 dimensions isotropic noise makes a query's nearest neighbours nearly equidistant: the printed contrast line
shows how close the top-1, top-10 and top-100 cosines are. This is harder than real CLIP vectors, whose noise
lives in fewer dimensions; recall on real data is expected to be at least as good.

This is a script that prints figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import signal
import sys
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from elasticsearch import Elasticsearch, helpers
from machine import cpu_model  # bench/machine.py, beside this script

from crawler.config import load_settings
from index_setup.client import es_client
from index_setup.indices import delete_indices, ensure_indices

FIELD = "image_embedding"
# Decimals sent in JSON; the float32 vectors used by the brute force are exactly these decimals, so ES and
# numpy hold the same values (short numbers also keep the bulk bodies small).
DECIMALS = 7
# Weight of the direction all centres share: mean cosine between two centres is about w^2 / (w^2 + 1).
COMMON_WEIGHT = 0.65
DOMAINS = 10
WARMUP_PER_ROW = 20


# ---------------------------------------------------------------------------------------------- data

def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _as_sent(a: np.ndarray) -> np.ndarray:
    """The float32 values ES will hold for vectors sent with DECIMALS decimals."""
    return np.round(a.astype(np.float64), DECIMALS).astype(np.float32)


@dataclass
class Clusters:
    centres: np.ndarray      # (clusters, dims) float64, unit
    weights: np.ndarray      # (clusters,) probabilities of a member belonging to each cluster
    sigma: np.ndarray        # (clusters,) noise norm; cos(member, centre) ~ 1 / sqrt(1 + sigma^2)

    @classmethod
    def make(cls, rng: np.random.Generator, count: int, dims: int, spread: float) -> Clusters:
        common = _unit(rng.standard_normal(dims))
        centres = _unit(COMMON_WEIGHT * common + rng.standard_normal((count, dims)) / math.sqrt(dims))
        weights = rng.lognormal(0.0, 1.0, count)
        member_cos = np.clip(rng.normal(spread, 0.03, count), 0.3, 0.99)
        return cls(centres, weights / weights.sum(), np.sqrt(1.0 / member_cos**2 - 1.0))

    def members(self, rng: np.random.Generator, n: int, chunk: int = 10_000) -> tuple[np.ndarray, np.ndarray]:
        """n new members (float32, as ES will hold them) and their cluster labels."""
        dims = self.centres.shape[1]
        labels = rng.choice(len(self.weights), size=n, p=self.weights)
        out = np.empty((n, dims), dtype=np.float32)
        for start in range(0, n, chunk):
            lab = labels[start:start + chunk]
            noise = rng.standard_normal((len(lab), dims)) / math.sqrt(dims)
            out[start:start + chunk] = _as_sent(_unit(self.centres[lab] + self.sigma[lab, None] * noise))
        return out, labels


def doc_id(i: int) -> str:
    """A 64-hex id shaped like the product's SHA-256 image ids, that maps back to the row."""
    return f"{i:064x}"


def domain_name(d: int) -> str:
    return f"site{d:02d}.example"


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, mask: np.ndarray | None = None,
                chunk: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cosines of each query's k nearest vectors (all unit), best first; `mask` restricts the rows.

    Where fewer than k rows pass the mask, the missing ones are -1.
    """
    rows, sims = [], []
    for start in range(0, len(queries), chunk):
        s = queries[start:start + chunk] @ vectors.T
        if mask is not None:
            s[:, ~mask] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        top_s = np.take_along_axis(s, top, axis=1)
        order = np.argsort(-top_s, axis=1)
        rows.append(np.take_along_axis(top, order, axis=1))
        sims.append(np.take_along_axis(top_s, order, axis=1))
    rows_, sims_ = np.concatenate(rows), np.concatenate(sims)
    rows_[np.isinf(sims_)] = -1  # fewer than k rows pass the mask
    return rows_, sims_


# ---------------------------------------------------------------------------------------------- ES

def actions(alias: str, vectors: np.ndarray, domains: np.ndarray, chunk: int = 1000):
    """Lazy bulk actions shaped like the product's image documents (create, _id = image_id)."""
    for start in range(0, len(vectors), chunk):
        rows = np.round(vectors[start:start + chunk].astype(np.float64), DECIMALS).tolist()
        for offset, vector in enumerate(rows):
            i = start + offset
            yield {"_op_type": "create", "_index": alias, "_id": doc_id(i),
                   "_source": {"image_id": doc_id(i), "sha256": doc_id(i), "format": "jpeg",
                               "domains": [domain_name(int(domains[i]))], FIELD: vector}}


def load(client: Elasticsearch, alias: str, vectors: np.ndarray, domains: np.ndarray, *, chunk_size: int,
         threads: int) -> float:
    """Bulk-load and refresh; returns seconds. Exits when any document failed."""
    started = time.perf_counter()
    failed: dict[str, int] = {}
    bulk_client = client.options(request_timeout=300)
    for ok, info in helpers.parallel_bulk(bulk_client, actions(alias, vectors, domains), thread_count=threads,
                                          chunk_size=chunk_size, max_chunk_bytes=50 * 2**20, queue_size=threads,
                                          raise_on_error=False, raise_on_exception=False):
        if not ok:
            reason = str(next(iter(info.values())).get("error", {}).get("type", "unknown"))
            failed[reason] = failed.get(reason, 0) + 1
    client.options(request_timeout=300).indices.refresh(index=alias)
    if failed:
        raise SystemExit(f"bulk load failed for some documents: {failed}")
    return time.perf_counter() - started


def wait_for_merges(client: Elasticsearch, alias: str, timeout: float = 1800.0) -> float:
    """Wait until no merge runs on the index (background merges would skew the timings); returns seconds."""
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        merges = client.indices.stats(index=alias, metric="merge").body["_all"]["primaries"]["merges"]
        if merges["current"] == 0:
            break
        time.sleep(1.0)
    return time.perf_counter() - started


def index_stats(client: Elasticsearch, alias: str) -> dict[str, int]:
    body = client.indices.stats(index=alias, metric="docs,store,segments").body["_all"]["primaries"]
    return {"docs": body["docs"]["count"], "bytes": body["store"]["size_in_bytes"],
            "segments": body["segments"]["count"]}


def knn_body(vector: list[float], k: int, num_candidates: int, oversample: float | None,
             filter_: dict[str, Any] | None) -> dict[str, Any]:
    knn: dict[str, Any] = {"field": FIELD, "query_vector": vector, "k": k, "num_candidates": num_candidates}
    if oversample:
        knn["rescore_vector"] = {"oversample": oversample}
    if filter_ is not None:
        knn["filter"] = filter_
    return knn


def profile_work(client: Elasticsearch, alias: str, knn: dict[str, Any], k: int) -> tuple[int | None, int | None]:
    """Vector comparisons and float-rescored candidates of one query, from the profile API (None if absent)."""
    try:
        shard = client.search(index=alias, knn=knn, size=k, source=False, profile=True)["profile"]["shards"][0]
        knn_profile = shard["dfs"]["knn"][0]
    except (KeyError, IndexError, TypeError):
        return None, None
    rescored = sum(q.get("breakdown", {}).get("score_count", 0) for q in knn_profile.get("query", [])
                   if q.get("type") == "FunctionScoreQuery")
    return knn_profile.get("vector_operations_count"), rescored


def _opt(value: int | None) -> str:
    return "?" if value is None else str(value)


def prefault(client: Elasticsearch, alias: str, vectors: np.ndarray, k: int, num_candidates: int) -> None:
    """Bring the graph and vectors into the page cache before any row is timed (warm-up vectors, not queries)."""
    for _ in range(3):
        for vector in vectors:
            client.search(index=alias, knn=knn_body(vector.tolist(), k, num_candidates, 4, None), size=k,
                          source=False)


@dataclass
class Row:
    label: str
    num_candidates: int
    oversample: float | None
    recall: float
    recall_p10: float
    worst: float
    short: int
    p50: float
    p99: float
    took_p50: float
    took_p99: float
    load: float
    vector_ops: int | None
    rescored: int | None


def run_row(client: Elasticsearch, alias: str, queries: np.ndarray, warmup: np.ndarray, truth: np.ndarray, *,
            k: int, num_candidates: int, oversample: float | None, filter_: dict[str, Any] | None = None,
            label: str = "") -> Row:
    def search(vector: np.ndarray):
        return client.search(index=alias, knn=knn_body(vector.tolist(), k, num_candidates, oversample, filter_),
                             size=k, source={"excludes": [FIELD]})

    for vector in warmup:
        search(vector)
    vector_ops, rescored = profile_work(client, alias, knn_body(warmup[0].tolist(), k, num_candidates, oversample,
                                                                filter_), k)
    latencies, tooks, recalls, short = [], [], [], 0
    for vector, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        response = search(vector)
        latencies.append((time.perf_counter() - started) * 1000.0)
        tooks.append(response["took"])
        hits = {int(h["_id"], 16) for h in response["hits"]["hits"]}
        wanted = {int(r) for r in expected if r >= 0}
        short += len(hits) < len(wanted)
        recalls.append(len(hits & wanted) / len(wanted) if wanted else 1.0)
    return Row(label, num_candidates, oversample, float(np.mean(recalls)), float(np.percentile(recalls, 10)),
               float(np.min(recalls)), short, float(np.percentile(latencies, 50)),
               float(np.percentile(latencies, 99)), float(np.percentile(tooks, 50)), float(np.percentile(tooks, 99)),
               os.getloadavg()[0], vector_ops, rescored)


def print_table(title: str, rows: list[Row], k: int, queries: int) -> None:
    print(f"\n{title}  (k={k}, {queries} timed queries per row after {WARMUP_PER_ROW} warm-up, sequential)")
    head = (f"{'':>9} {'num_cand':>8} {'oversample':>10} {'recall@' + str(k):>9} {'rec p10':>7} {'worst':>5} "
            f"{'<k hits':>7} {'p50 ms':>7} {'p99 ms':>7} {'took p50':>8} {'took p99':>8} {'vec ops':>7} "
            f"{'rescored':>8} {'load1':>5}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.label:>9} {r.num_candidates:>8} {('-' if not r.oversample else f'{r.oversample:g}'):>10} "
              f"{r.recall:>9.3f} {r.recall_p10:>7.2f} {r.worst:>5.1f} {r.short:>7} {r.p50:>7.1f} {r.p99:>7.1f} "
              f"{r.took_p50:>8.0f} {r.took_p99:>8.0f} {_opt(r.vector_ops):>7} {_opt(r.rescored):>8} {r.load:>5.1f}")
    print(f"recall@{k}: mean over queries, against numpy brute force (filtered rows: over the filtered docs); "
          f"rec p10 / worst: 10th percentile / minimum per query; <k hits: queries answered with fewer than k "
          f"(or than the matching docs); "
          f"p50/p99 ms: client wall time; took: server-side ms; vec ops / rescored: vector comparisons and "
          f"float-rescored candidates of one profiled query (profile API); load1: 1-min load average at the row's end "
          f"({os.cpu_count()} cores; above that, other processes competed for the CPU)")


# ---------------------------------------------------------------------------------------------- main



def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def _config(text: str) -> tuple[int, float | None]:
    nc, _, os_ = text.partition(":")
    return int(nc), (float(os_) or None) if os_ else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--vectors", type=int, default=100_000, help="documents to load")
    p.add_argument("--queries", type=int, default=200, help="timed queries per row")
    p.add_argument("--clusters", type=int, default=300, help="cluster centres")
    p.add_argument("--spread", type=float, default=0.9,
                   help="mean cosine between a member and its centre (higher = tighter clusters, harder)")
    p.add_argument("--dims", type=int, default=512, help="vector size (512: clip-ViT-B-32's)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--num-candidates", type=_ints, default=[50, 100, 200], help="comma-separated")
    p.add_argument("--oversample", type=_floats, default=[2, 3, 4], help="comma-separated rescore factors")
    p.add_argument("--filter-at", type=_config, action="append", default=None, metavar="NC[:OVERSAMPLE]",
                   help="configurations of the pre-filter rows (repeatable; default 100 and 100:3)")
    p.add_argument("--merge", choices=["no", "yes", "both"], default="both",
                   help="tables on the segments as loaded, after a force-merge to 1 segment, or both")
    p.add_argument("--chunk-size", type=int, default=500, help="documents per bulk request")
    p.add_argument("--threads", type=int, default=2, help="parallel_bulk threads")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--es-url", default=None, help="Elasticsearch URL (default: ES_URL or the local node)")
    return p.parse_args(argv)


def _sigterm(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    filter_at = args.filter_at or [(100, None), (100, 3.0)]
    signal.signal(signal.SIGTERM, _sigterm)
    # Ctrl-C raises KeyboardInterrupt even where the shell started us with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    settings = load_settings({"ES_URL": args.es_url})
    client = es_client(settings)
    node = next(iter(client.nodes.info(node_id="_local", metric="jvm,os").body["nodes"].values()))
    heap = node["jvm"]["mem"]["heap_max_in_bytes"] / 2**30
    print(f"CPU: {cpu_model()} x {os.cpu_count()} logical cores (client and node on one machine: "
          f"{node['host'] in ('127.0.0.1', 'localhost')}); python {platform.python_version()}")
    print(f"Elasticsearch {node['version']}, heap {heap:.1f} GiB, {node['os'].get('available_processors')} "
          f"processors")

    rng = np.random.default_rng(args.seed)
    t0 = time.perf_counter()
    clusters = Clusters.make(rng, args.clusters, args.dims, args.spread)
    vectors, labels = clusters.members(rng, args.vectors)
    queries, _ = clusters.members(rng, args.queries)
    warmup, _ = clusters.members(rng, WARMUP_PER_ROW)
    domains = rng.integers(0, DOMAINS, size=args.vectors)
    k = args.k
    far = min(100, args.vectors - 1)
    truth, sims = exact_top_k(vectors, queries, max(k + 1, far))
    sizes = np.bincount(labels, minlength=args.clusters)
    centre_cos = clusters.centres @ clusters.centres.T
    print(f"\nData: {args.vectors} x {args.dims} float32 unit vectors ({vectors.nbytes / 2**20:.0f} MiB) in "
          f"{args.clusters} clusters (sizes {sizes.min()}..{sizes.max()}, median {int(np.median(sizes))}), "
          f"member-centre cosine ~{args.spread}, centre-centre cosine mean "
          f"{centre_cos[np.triu_indices(args.clusters, 1)].mean():.2f}; {args.queries} queries = new members; "
          f"generated + brute force in {time.perf_counter() - t0:.1f} s")
    print(f"Contrast (exact cosines, mean over queries): top-1 {sims[:, 0].mean():.4f}, top-{k} "
          f"{sims[:, k - 1].mean():.4f}, top-{far} {sims[:, far - 1].mean():.4f}; "
          f"top-1 minus top-{k} {np.mean(sims[:, 0] - sims[:, k - 1]):.4f}, top-{k} minus top-{k + 1} "
          f"{np.mean(sims[:, k - 1] - sims[:, k]):.5f}")
    truth = truth[:, :k]

    filter_domain = 3
    mask = domains == filter_domain
    term = {"term": {"domains": domain_name(filter_domain)}}
    truth_filtered, _ = exact_top_k(vectors, queries, k, mask=mask)

    alias = f"bench-query-{uuid.uuid4().hex[:8]}"
    try:
        ensure_indices(client, alias, dims=args.dims, model="bench-synthetic")
        seconds = load(client, alias, vectors, domains, chunk_size=args.chunk_size, threads=args.threads)
        settle = wait_for_merges(client, alias)
        stats = index_stats(client, alias)
        print(f"\nIndex {alias}: loaded {stats['docs']} docs in {seconds:.1f} s ({stats['docs'] / seconds:.0f} "
              f"docs/s, bulk chunks of {args.chunk_size}, {args.threads} threads, refresh included), background "
              f"merges done {settle:.1f} s later; {stats['segments']} segments, store "
              f"{stats['bytes'] / 2**20:.1f} MiB")
        print(f"Pre-filter: term domains={domain_name(filter_domain)} matches {int(mask.sum())} docs "
              f"({mask.mean():.1%})")
        prefault(client, alias, warmup, k, max(args.num_candidates))

        phases = {"no": ["loaded"], "yes": ["merged"], "both": ["loaded", "merged"]}[args.merge]
        for phase in phases:
            if phase == "merged":
                started = time.perf_counter()
                client.options(request_timeout=3600).indices.forcemerge(index=alias, max_num_segments=1)
                client.indices.refresh(index=alias)
                merge_s = time.perf_counter() - started
                stats = index_stats(client, alias)
                print(f"\nForce-merged to {stats['segments']} segment in {merge_s:.1f} s; store "
                      f"{stats['bytes'] / 2**20:.1f} MiB")
                prefault(client, alias, warmup, k, max(args.num_candidates))
            rows = []
            for nc in args.num_candidates:
                for oversample in [None, *args.oversample]:
                    rows.append(run_row(client, alias, queries, warmup, truth, k=k, num_candidates=nc,
                                        oversample=oversample))
            for nc, oversample in filter_at:
                rows.append(run_row(client, alias, queries, warmup, truth_filtered, k=k, num_candidates=nc,
                                    oversample=oversample, filter_=term, label="filtered"))
            print_table(f"{phase.upper()}: {stats['segments']} segment(s), {stats['docs']} docs", rows, k,
                        len(queries))
    finally:
        deleted = delete_indices(client, alias)
        print(f"\nDeleted scratch indices: {', '.join(deleted) or 'none'}", file=sys.stderr)
        client.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
