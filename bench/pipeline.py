"""Throughput of the crawl's image path, from JPEG bytes to indexed vectors: prints figures, not a test.

    python bench/pipeline.py [--images 500] [--pages 10] [--naive 40] [--cache DIR]

Serves N generated photo-like JPEGs (1-2 MP, quality 88) from a local site on 127.0.0.1 and measures, with the
full-size stand-in CLIP ViT-B/32 (random weights, real compute):

  (a) naive: full PIL decode + RGB, then ``model.encode([img])`` one image at a time, fp32;
  (b) the bare vision tower on ready 224x224 tensors, batched, at the best dtype this CPU has (the compute limit);
  (c) the embedding module alone: bytes -> ``imaging.load_image`` -> ``Embedder.embed_images`` in batches, with
      decoding in a thread pool overlapped with inference, as the crawl does it;
  (d) the whole crawl (``imgsearch crawl`` in a subprocess, politeness off) into a scratch index, timed from the
      crawl's start (after the model has loaded) to its end; the index is deleted afterwards.

Images and models are generated once into a cache folder, so reruns start at once. The machine may be shared:
each phase also prints how much CPU other processes used meanwhile ("others"), so a disturbed figure shows.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections import deque
from pathlib import Path

# Nothing here may reach a model hub; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

# Image sizes cycled through: 1.2-1.9 MP, landscape and portrait, as phone and camera pictures come.
SIZES = ((1280, 960), (1600, 1200), (1440, 1080), (960, 1280), (1600, 1067), (1200, 1600), (1536, 1024))
QUALITY = 88
IMAGE_SET = f"photos-v1-q{QUALITY}"


# -- inputs -------------------------------------------------------------------------------------------------------
def _make_image(task: tuple[int, str]) -> int:
    from crawler.sample_site import encode, photo_like

    seed, path = task
    width, height = SIZES[seed % len(SIZES)]
    data = encode(photo_like(seed, width, height), quality=QUALITY)
    tmp = Path(path + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)
    return len(data)


def ensure_images(folder: Path, count: int) -> list[Path]:
    """The first `count` images of the set, generating the missing ones (in parallel, once)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"photo-{i:05d}.jpg" for i in range(count)]
    missing = [(i, str(p)) for i, p in enumerate(paths) if not p.exists()]
    if missing:
        started = time.monotonic()
        print(f"Generating {len(missing)} images into {folder} ...", flush=True)
        with concurrent.futures.ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            for _ in pool.map(_make_image, missing, chunksize=4):
                pass
        print(f"  done in {time.monotonic() - started:.0f} s", flush=True)
    return paths


def ensure_models(folder: Path) -> tuple[Path, Path]:
    from pipelines.standin_models import build_models

    return build_models(folder, "full")


def site_routes(paths: list[Path], pages: int) -> dict:
    """An index page linking `pages` gallery pages that show the images between them; bodies read on request."""
    from crawler.sample_site import Route, page

    routes = {"/robots.txt": Route(b"User-agent: *\nAllow: /\n", "text/plain")}
    per_page = -(-len(paths) // pages)
    links = []
    for p in range(pages):
        cells = []
        for path in paths[p * per_page:(p + 1) * per_page]:
            url = f"/images/{path.name}"
            routes[url] = Route(path.read_bytes, "image/jpeg")
            cells.append(f'<figure><img src="{url}" alt="{path.stem}"></figure>')
        if cells:
            routes[f"/gallery/{p + 1}.html"] = page(f"Gallery {p + 1}", "".join(cells))
            links.append(f'<li><a href="/gallery/{p + 1}.html">Gallery {p + 1}</a></li>')
    routes["/"] = page("Benchmark photos", f"<ul>{''.join(links)}</ul>")
    return routes


# -- measuring ----------------------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _machine_busy_seconds() -> float | None:
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    me, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + children.ru_utime + children.ru_stime


def process_cpu_seconds(pid: int | None) -> float:
    if not pid:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuWatch:
    """CPU used during a phase: by this process and its children, by one named process, and by the rest."""

    def __init__(self, other_pid: int | None = None) -> None:
        self.other_pid = other_pid

    def __enter__(self) -> CpuWatch:
        self.wall = time.monotonic()
        self.busy = _machine_busy_seconds()
        self.own = _own_cpu_seconds()
        self.other = process_cpu_seconds(self.other_pid)
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.monotonic() - self.wall
        busy = _machine_busy_seconds()
        self.own = _own_cpu_seconds() - self.own
        self.other = process_cpu_seconds(self.other_pid) - self.other
        total = (busy - self.busy) if busy is not None and self.busy is not None else None
        self.foreign = max(0.0, total - self.own - self.other) if total is not None else None

    def describe(self, other_name: str = "") -> str:
        wall = max(self.wall, 1e-9)
        text = f"cpu: ours {self.own / wall:.2f} cores"
        if self.other_pid:
            text += f", {other_name} {self.other / wall:.2f}"
        if self.foreign is not None:
            text += f", others {self.foreign / wall:.2f}"
        return text


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# -- the four measurements ----------------------------------------------------------------------------------------
def bench_naive(model, datas: list[bytes]) -> float:
    """(a) img/s: full decode, RGB, encode one at a time, fp32 (the model as loaded)."""
    import torch
    from PIL import Image

    def one(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
        with torch.inference_mode():
            model.encode([image], show_progress_bar=False)

    one(datas[0])  # warm-up
    started = time.perf_counter()
    for data in datas[1:]:
        one(data)
    return (len(datas) - 1) / (time.perf_counter() - started)


def bench_tower(model, batch_size: int, bf16: bool, min_seconds: float = 8.0, min_batches: int = 4) -> float:
    """(b) img/s: the CLIP vision tower and projection on ready 224x224 tensors, batched."""
    import contextlib

    import torch

    clip = model[0].auto_model
    side = clip.config.vision_config.image_size
    pixels = torch.randn(batch_size, 3, side, side)
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    with torch.inference_mode(), autocast():
        clip.get_image_features(pixel_values=pixels)  # warm-up
        done, started = 0, time.perf_counter()
        while done < min_batches or time.perf_counter() - started < min_seconds:
            clip.get_image_features(pixel_values=pixels)
            done += 1
        elapsed = time.perf_counter() - started
    return done * batch_size / elapsed


def bench_embed(embedder, paths: list[Path], batch_size: int, window: int, workers: int) -> tuple[float, int]:
    """(c) img/s: read + load_image in a thread pool (as the fetch stage's asyncio.to_thread does) while the
    model embeds the previous batch; at most `window` images decoded ahead (the crawl's CONCURRENT_ITEMS)."""
    from pipelines import imaging

    def load(path: Path):
        return imaging.load_image(path.read_bytes())

    embedder.embed_images([load(p).image for p in paths[:batch_size]])  # warm-up at this batch size
    pending: deque[concurrent.futures.Future] = deque()
    embedded = 0
    todo = iter(paths)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as pool:
        started = time.perf_counter()
        while True:
            for path in todo:
                pending.append(pool.submit(load, path))
                if len(pending) >= window:
                    break
            if not pending:
                break
            batch = [pending.popleft().result().image for _ in range(min(batch_size, len(pending)))]
            # Top the window up before the model call, so decoding runs during it.
            for path in todo:
                pending.append(pool.submit(load, path))
                if len(pending) >= window:
                    break
            vectors = embedder.embed_images(batch)
            assert vectors.shape[0] == len(batch) and vectors.dtype == np.float32
            embedded += len(batch)
        elapsed = time.perf_counter() - started
    return embedded / elapsed, embedded


def decode_cost_ms(paths: list[Path], count: int = 40) -> float:
    from pipelines import imaging

    datas = [p.read_bytes() for p in paths[:count]]
    started = time.perf_counter()
    for data in datas:
        imaging.load_image(data)
    return (time.perf_counter() - started) / len(datas) * 1000


def bench_crawl(paths: list[Path], pages: int, models: tuple[Path, Path], scratch: Path, es_pid: int | None,
                concurrency: int) -> dict:
    """(d) the crawl in a subprocess; returns its stats plus peak RSS and CPU use."""
    from crawler.sample_site import SiteServer

    index = f"bench-pipeline-{uuid.uuid4().hex[:8]}"
    stats_file = scratch / "stats.json"
    env = {
        **os.environ,
        "IMGSEARCH_IMAGE_MODEL": str(models[0]),
        "IMGSEARCH_TEXT_MODEL": str(models[1]),
        "IMGSEARCH_INDEX": index,
        "FILES_STORE": str(scratch / "store"),
        "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(scratch / "dead-letter"),
        "IMGSEARCH_PROGRESS_SECONDS": "0",
        "DOWNLOAD_DELAY": "0",
        "AUTOTHROTTLE_ENABLED": "false",
        "CONCURRENT_REQUESTS": str(concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": str(concurrency),
        "HF_HUB_OFFLINE": "1",
    }
    with SiteServer(site_routes(paths, pages)) as site:
        command = [sys.executable, "-m", "cli", "crawl", site.url + "/", "--depth", "1",
                   "--stats-file", str(stats_file)]
        with open(scratch / "crawl.log", "wb") as log, CpuWatch(es_pid) as watch:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        try:
            stats = json.loads(stats_file.read_text())
        except (OSError, ValueError):
            stats = {}
        finally:
            _delete_index(index)
    if process.returncode != 0 or not stats:
        tail = (scratch / "crawl.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"the crawl failed (exit {process.returncode}):\n{tail}")
    stats["_rss_mib"] = usage.ru_maxrss / 1024
    stats["_cpu"] = watch
    stats["_wall"] = watch.wall
    stats["_index"] = index
    return stats


def _delete_index(index: str) -> None:
    from crawler.config import load_settings
    from index_setup.client import es_client
    from index_setup.indices import delete_indices

    client = es_client(load_settings())
    try:
        delete_indices(client, index)
    finally:
        client.close()


def es_pid() -> int | None:
    """The local Elasticsearch node's pid (for its CPU use), starting it if needed; None with ES_URL."""
    from cli import ensure_local_node
    from crawler.config import load_settings

    settings = load_settings()
    if settings.get("ES_URL"):
        return None
    ensure_local_node(settings)
    from index_setup.local_node import LocalNode

    node = LocalNode(settings.get("IMGSEARCH_CACHE_DIR"), port=settings.getint("IMGSEARCH_ES_PORT"),
                     heap=settings.get("IMGSEARCH_ES_HEAP"))
    return node.status().pid


# -- main ---------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from crawler.config import load_settings

    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500, help="images on the site (default 500)")
    parser.add_argument("--pages", type=int, default=10, help="gallery pages they are spread over (default 10)")
    parser.add_argument("--naive", type=int, default=40, help="images for the slow naive measurement (a)")
    parser.add_argument("--cache", type=Path, default=Path(settings.get("IMGSEARCH_CACHE_DIR")) / "bench",
                        help="where generated images and stand-in models are kept between runs")
    parser.add_argument("--concurrency", type=int, default=32, help="crawl's CONCURRENT_REQUESTS(_PER_DOMAIN)")
    parser.add_argument("--skip-crawl", action="store_true", help="measure (a)-(c) only")
    args = parser.parse_args(argv)
    if args.images < 2 or args.naive < 2:
        parser.error("--images and --naive need at least 2")

    import torch

    from pipelines.embedding import Embedder, cpu_has_bf16

    paths = ensure_images(args.cache / IMAGE_SET, args.images)
    models = ensure_models(args.cache / "models-full")
    batch_size = settings.getint("IMGSEARCH_EMBED_BATCH_SIZE")
    window = settings.getint("CONCURRENT_ITEMS")
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's default pool, which the fetch stage uses
    sizes = sorted({SIZES[i % len(SIZES)] for i in range(len(paths))})
    total_bytes = sum(p.stat().st_size for p in paths)
    pid = es_pid()

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, bf16: {'yes' if cpu_has_bf16() else 'no'}); "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}")
    print(f"Images: {len(paths)} JPEGs (q{QUALITY}), {min(w * h for w, h in sizes) / 1e6:.1f}-"
          f"{max(w * h for w, h in sizes) / 1e6:.1f} MP, {total_bytes / len(paths) / 1e3:.0f} kB each on average; "
          f"model: full-size stand-in ViT-B/32 ({models[0]})")

    started = time.perf_counter()
    embedder = Embedder(str(models[0]), str(models[1]), batch_size=batch_size,
                        bf16_min_cosine=settings.getfloat("IMGSEARCH_EMBED_BF16_MIN_COSINE"))
    model = embedder.load_image_model()
    cosine = "n/a" if embedder.bf16_cosine is None else f"{embedder.bf16_cosine:.6f}"
    print(f"Embedder: loaded in {time.perf_counter() - started:.1f} s; precision {embedder.precision}; bf16 vs "
          f"fp32 minimum cosine {cosine}; batch size {batch_size}")
    print()

    best_bf16 = cpu_has_bf16()
    with CpuWatch() as watch:
        b = bench_tower(model, batch_size, best_bf16)
    print(f"(b) bare vision tower, {batch_size} x 224x224 tensors, {'bf16 autocast' if best_bf16 else 'fp32'}: "
          f"{b:7.1f} img/s   [{watch.describe()}]")

    datas = [p.read_bytes() for p in paths[:args.naive]]
    with CpuWatch() as watch:
        a = bench_naive(model, datas)
    del datas
    print(f"(a) naive: full decode + encode([img]) one at a time, fp32 ({args.naive - 1} images):"
          f"{a:7.1f} img/s   [{watch.describe()}]")

    with CpuWatch() as watch:
        c, embedded = bench_embed(embedder, paths, batch_size, window, workers)
    print(f"(c) embedding module: load_image in {workers} threads ({window} ahead) + embed_images x {batch_size} "
          f"({embedded} images): {c:7.1f} img/s   [{watch.describe()}]")
    print(f"    load_image alone, one thread: {decode_cost_ms(paths):.1f} ms/img "
          f"(model alone at (b): {1000 / b:.1f} ms/img)")

    d = None
    if not args.skip_crawl:
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            stats = bench_crawl(paths, args.pages, models, Path(tmp), pid, args.concurrency)
        indexed = stats.get("imgsearch/index/indexed", 0)
        elapsed = float(stats["elapsed_time_seconds"])
        d = indexed / elapsed
        watch = stats["_cpu"]
        print(f"(d) crawl to indexed: {indexed} of {len(paths)} images indexed in {elapsed:.1f} s from the crawl's "
              f"start (process {stats['_wall']:.1f} s in all, model load included): {d:7.1f} img/s   "
              f"[{watch.describe('elasticsearch')}]")
        print(f"    precision {stats.get('imgsearch/embed/precision')}, {stats.get('imgsearch/embed/batches')} "
              f"batches, index {stats['_index']} (deleted), "
              f"failed/skipped: {sum(v for k, v in stats.items() if '/failed/' in k or '/skipped/' in k)}")
    print()
    print(f"c/b = {c / b:.2f} (target >= 0.8)   " + (f"d/c = {d / c:.2f} (target >= 0.9)   " if d else "")
          + f"c/a = {c / a:.2f} (target >= 2.5)")
    if d:
        print(f"peak RSS: crawl process {stats['_rss_mib']:.0f} MiB, benchmark process {peak_rss_mib():.0f} MiB")
    else:
        print(f"peak RSS: benchmark process {peak_rss_mib():.0f} MiB")
    print(f"CPU {cpu_model()}; torch threads {torch.get_num_threads()}; precision {embedder.precision}; "
          f"load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
