"""Benchmark of `imgsearch serve`: latency and throughput of POST /api/search under concurrent clients.

    python bench/serve.py                                   # 10k images, 200 requests from 4 clients
    python bench/serve.py --images 20000 --requests 400 --keep-index

Fills a scratch index, created with the product's own `ensure_indices`, with `--images` synthetic images
(random unit vectors, a perceptual hash for the whole image and 15 crops, one source page each), starts
`imgsearch serve` in a subprocess on a free loopback port with the full-size stand-in CLIP models (random
weights, the real models' compute), and sends it requests on 127.0.0.1 only: first `--baseline` requests from
one client (the unloaded latency), then `--requests` from `--clients` concurrent clients. Requests alternate
between image uploads (generated photo-like 640x480 JPEGs, decoded, hashed and embedded by the server) and
text queries, k=10.

For each phase it prints p50 / p99 latency (client-side wall time), requests/s, and where the time went, from
the Server-Timing header the server sends (web/timing.py): in embedding (the model call, including the wait for
the model, which answers one query at a time), in Elasticsearch (the msearch of the three channels and the
sources lookup), and the rest: inside the query (decoding, perceptual hashes, merging) and outside it (HTTP,
upload parsing, JSON, the thread hand-off). The goal: the rest under 10 % of p50.

The index is deleted at the end unless --keep-index (then a later run reuses it). This is a script that prints
figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# Nothing here may reach a model hub; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import requests  # noqa: E402

from bench.machine import cpu_model  # noqa: E402

DOMAINS = 10
CROPS = 15
QUERY_IMAGES = 40
TEXTS = ("a black cat on a sofa", "un chat noir", "sunset over the sea", "a red bicycle", "mountains in winter",
         "ein Hund im Park", "a bowl of fruit", "city skyline at night", "un perro en la playa", "old paper map",
         "a bridge in the fog", "children playing football", "a plate of pasta", "yellow flowers", "a train station")


# -- the index -------------------------------------------------------------------------------------------------
def image_id(i: int) -> str:
    return hashlib.sha256(f"bench-serve-{i}".encode()).hexdigest()


def documents(alias: str, count: int, dims: int, model: str, seed: int = 7):
    """Bulk actions: `count` image documents shaped as the crawl writes them, and one source each."""
    rng = np.random.default_rng(seed)
    now = "2026-01-01T00:00:00.000Z"
    for start in range(0, count, 1000):
        block = rng.standard_normal((min(1000, count - start), dims)).astype(np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        hashes = rng.integers(0, 2**63, size=(len(block), CROPS + 1), dtype=np.int64)
        for offset, vector in enumerate(np.round(block, 6)):
            i = start + offset
            sha = image_id(i)
            domain = f"site{i % DOMAINS}.example"
            url = f"https://{domain}/images/{i}.jpg"
            crops = [{"crop": "whole" if j == 0 else f"crop_{j}", "hash": f"{int(h):016x}"}
                     for j, h in enumerate(hashes[offset])]
            yield {"_index": alias, "_id": sha, "_source": {
                "image_id": sha, "sha256": sha, "image_embedding": vector.tolist(), "image_name": f"{i}.jpg",
                "relative_path": f"full/{sha[:2]}/{sha}.jpg", "image_url": url, "width": 640, "height": 480,
                "format": "jpeg", "bytes": 60_000, "first_seen": now, "last_seen": now, "domains": [domain],
                "model": model, "phash": crops[0]["hash"], "phash_crops": crops}}
            yield {"_index": f"{alias}-sources", "_id": sha, "_source": {
                "image_id": sha, "image_url": url, "page_url": f"https://{domain}/gallery/{i // 20}.html",
                "page_title": f"Gallery {i // 20}", "alt_text": f"picture {i}", "domain": domain,
                "first_seen": now, "last_seen": now}}


def ensure_index(client, alias: str, count: int, model: str) -> str:
    from elasticsearch import helpers

    from index_setup.indices import ensure_indices
    from index_setup.mappings import DEFAULT_DIMS

    ensure_indices(client, alias, model=model)
    have = client.count(index=alias)["count"]
    if have >= count:
        return f"reused ({have} images)"
    started = time.perf_counter()
    ok, errors = helpers.bulk(client.options(request_timeout=300), documents(alias, count, DEFAULT_DIMS, model),
                              chunk_size=500, raise_on_error=False, stats_only=True)
    client.indices.refresh(index=f"{alias},{alias}-sources")
    client.options(request_timeout=600).indices.forcemerge(index=f"{alias},{alias}-sources", max_num_segments=1)
    return f"loaded {ok} documents ({errors} errors) in {time.perf_counter() - started:.0f} s, force-merged"


# -- the server ------------------------------------------------------------------------------------------------
class Server:
    """`imgsearch serve` in a subprocess on a free loopback port."""

    def __init__(self, alias: str, models: tuple[Path, Path], log: Path) -> None:
        env = {**os.environ, "IMGSEARCH_INDEX": alias, "IMGSEARCH_IMAGE_MODEL": str(models[0]),
               "IMGSEARCH_TEXT_MODEL": str(models[1]), "IMGSEARCH_SERVE_TOKEN": ""}
        self.log = log
        self._log_file = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", "0"],
                                        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log_file, text=True)
        self.url = ""

    def wait(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        assert self.process.stdout is not None
        for line in self.process.stdout:  # the CLI prints the URL once the models are loaded
            match = re.search(r"Search page on (http://127\.0\.0\.1:\d+)/", line)
            if match:
                self.url = match.group(1)
                break
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=5).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                break
            time.sleep(0.5)
        raise RuntimeError(f"the server did not come up; its log:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._log_file.close()


# -- the clients -----------------------------------------------------------------------------------------------
@dataclass
class Sample:
    kind: str
    latency_ms: float
    status: int
    embed_ms: float = 0.0
    es_ms: float = 0.0
    search_ms: float = 0.0


def query_images(count: int) -> list[bytes]:
    from crawler.sample_site import encode, photo_like

    return [encode(photo_like(10_000 + i, 640, 480)) for i in range(count)]


def send(session: requests.Session, url: str, n: int, images: list[bytes]) -> Sample:
    kind = "image" if n % 2 == 0 else "text"
    started = time.perf_counter()
    if kind == "image":
        response = session.post(url + "/api/search", files={"image": ("q.jpg", images[n % len(images)], "image/jpeg")},
                                data={"k": "10"}, timeout=120)
    else:
        response = session.post(url + "/api/search", json={"text": TEXTS[n % len(TEXTS)], "k": 10}, timeout=120)
    latency = (time.perf_counter() - started) * 1000
    sample = Sample(kind, latency, response.status_code)
    for name, value in re.findall(r"(\w+);dur=([\d.]+)", response.headers.get("server-timing", "")):
        setattr(sample, f"{name}_ms", float(value))
    return sample


def run_phase(url: str, requests_count: int, clients: int, images: list[bytes], first: int = 0
              ) -> tuple[list[Sample], float]:
    """`requests_count` requests from `clients` threads, each taking the next request number; (samples, wall s)."""
    samples: list[Sample] = []
    lock = threading.Lock()
    counter = iter(range(first, first + requests_count))

    def client() -> None:
        with requests.Session() as session:
            while True:
                with lock:
                    n = next(counter, None)
                if n is None:
                    return
                sample = send(session, url, n, images)
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client, name=f"client-{i}") for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return samples, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def report(title: str, samples: list[Sample], wall: float) -> None:
    failed = [s for s in samples if s.status != 200]
    good = [s for s in samples if s.status == 200]
    print(f"{title}: {len(samples)} requests in {wall:.1f} s = {len(samples) / wall:.2f} requests/s"
          + (f"; {len(failed)} FAILED (status {sorted({s.status for s in failed})})" if failed else ""))
    print(f"  {'':<8} {'n':>4} {'p50 ms':>8} {'p99 ms':>8} {'embed':>7} {'ES':>7} {'rest':>7}"
          f" {'(in query':>10} {'outside)':>9} {'rest p50 / p50':>15}")
    for kind in ("image", "text", "all"):
        chosen = [s for s in good if kind in ("all", s.kind)]
        if not chosen:
            continue
        total = sum(s.latency_ms for s in chosen)
        embed = sum(s.embed_ms for s in chosen) / total
        es = sum(s.es_ms for s in chosen) / total
        inside = sum(s.search_ms - s.embed_ms - s.es_ms for s in chosen) / total
        outside = sum(s.latency_ms - s.search_ms for s in chosen) / total
        p50 = percentile([s.latency_ms for s in chosen], 50)
        rest_p50 = statistics.median(s.latency_ms - s.embed_ms - s.es_ms for s in chosen)
        print(f"  {kind:<8} {len(chosen):>4} {p50:>8.1f} {percentile([s.latency_ms for s in chosen], 99):>8.1f} "
              f"{embed:>7.1%} {es:>7.1%} {inside + outside:>7.1%} {inside:>10.1%} {outside:>9.1%} "
              f"{rest_p50:>8.1f} ms = {rest_p50 / p50:.1%}")




# -- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from crawler.config import load_settings
    from index_setup.client import es_client
    from index_setup.indices import delete_indices
    from pipelines.standin_models import build_models

    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the scratch index (default 10000)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the concurrent phase (default 200)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients (default 4)")
    parser.add_argument("--baseline", type=int, default=20, help="requests from one client first (default 20)")
    parser.add_argument("--warmup", type=int, default=8, help="requests sent first and not counted (default 8)")
    parser.add_argument("--index", default="bench-serve", help="scratch index alias (default bench-serve)")
    parser.add_argument("--keep-index", action="store_true", help="keep the index for the next run")
    parser.add_argument("--cache", type=Path, default=Path(settings.get("IMGSEARCH_CACHE_DIR")) / "bench",
                        help="where the full-size stand-in models are kept between runs")
    args = parser.parse_args(argv)
    if args.images < 1 or args.requests < 1 or args.clients < 1:
        parser.error("--images, --requests and --clients must be at least 1")

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); load average {os.getloadavg()[0]:.2f} at start; "
          f"Python {platform.python_version()}")
    models = build_models(args.cache / "models-full", "full")
    client = es_client(settings)
    server = None
    try:
        print(f"Index {args.index}: {ensure_index(client, args.index, args.images, str(models[0]))}")
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
            started = time.perf_counter()
            server = Server(args.index, models, Path(scratch) / "serve.log")
            server.wait(600)
            print(f"imgsearch serve at {server.url}: up in {time.perf_counter() - started:.1f} s (full-size stand-in "
                  f"ViT-B/32 and multilingual DistilBERT, models loaded at start)")
            images = query_images(QUERY_IMAGES)
            print(f"Queries: image uploads of {len(images)} generated 640x480 JPEGs "
                  f"({sum(map(len, images)) / len(images) / 1e3:.0f} kB each on average) alternating with "
                  f"{len(TEXTS)} texts; k=10, num_candidates=100")
            run_phase(server.url, args.warmup, 1, images, first=10_000)
            print()
            report("1 client (unloaded)", *run_phase(server.url, args.baseline, 1, images))
            report(f"{args.clients} concurrent clients", *run_phase(server.url, args.requests, args.clients, images,
                                                                    first=args.baseline))
            print(f"\nLoad average {os.getloadavg()[0]:.2f} at the end. embed: the model call (with its wait for the "
                  f"model, one query at a time); ES: Elasticsearch calls; rest: in the query (decode, hashes, "
                  f"merge) and outside it (HTTP, upload parsing, JSON, thread hand-off).")
    finally:
        if server is not None:
            server.stop()
        if not args.keep_index:
            delete_indices(client, args.index)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
