"""Throughput of the crawl's image path, from JPEG bytes to indexed vectors: prints figures, not a test.

    python bench/pipeline.py [--images 500] [--pages 10] [--naive 40] [--cache DIR] [--device cpu|cuda[:N]]

Serves N generated photo-like JPEGs (1-2 MP, quality 88) from a local site on 127.0.0.1 and measures, with the
full-size stand-in CLIP ViT-B/32 (random weights, real compute):

  (a) naive: full PIL decode + RGB, then ``model.encode([img])`` one image at a time, fp32;
  (b) the bare vision tower on ready 224x224 tensors, batched, at the best dtype this CPU has (the compute limit);
  (c) the embedding module alone: bytes -> ``imaging.load_image`` -> ``Embedder.embed_images`` in batches, with
      decoding in a thread pool overlapped with inference, as the crawl does it;
  (d) the whole crawl (``imgsearch crawl`` in a subprocess, politeness off) into a scratch index, timed from the
      crawl's start (after the model has loaded) to its end; the index is deleted afterwards;
  (e) with ``--device cuda`` (or ``--device-decode``): decode + embed on the device, from JPEG bytes in memory:
      torchvision's ``decode_jpeg`` in batches (nvJPEG on a GPU), resize / crop / normalise as tensors there, the
      vision tower in bf16; with the minimum cosine of its vectors against (c)'s for the same images.

``--device`` (default cpu) runs the model on ``cuda`` / ``cuda:N`` instead, with the GPU batch size
(IMGSEARCH_EMBED_BATCH_SIZE_GPU, or ``--batch-size``); (a)-(d) then measure the crawl's own path on that device
(decoding on the CPU), and (e) what the device can do when it decodes too. (e) needs torchvision, which the
project does not install: ``pip install torchvision`` (the build matching torch) on the GPU machine.

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
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from datetime import datetime
from pathlib import Path

# Nothing here may reach a model hub; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from bench.machine import cpu_model  # noqa: E402

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


def wait_until_quiet(limit: float, threshold: float = 0.15, window: float = 2.0) -> None:
    """Wait (at most `limit` seconds) until other processes use under `threshold` cores: a shared machine's
    other work would be measured too. Elasticsearch's background work counts as other work here."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with CpuWatch() as watch:
            time.sleep(window)
        if watch.foreign is None or watch.foreign / watch.wall < threshold:
            return
    print(f"  (the machine is still busy after waiting {limit:.0f} s; measuring anyway)", flush=True)


class CpuTrace:
    """CPU seconds of a child process, of this process and of one more (Elasticsearch), sampled over wall-clock
    time, so the CPU spent between two moments known only afterwards (the crawl's start_time and finish_time)
    can be read off."""

    def __init__(self, pid: int, other_pid: int | None = None, period: float = 0.25) -> None:
        self.pid = pid
        self.other_pid = other_pid
        self.period = period
        self.samples: list[tuple[float, float, float, float]] = []
        self._done = False
        self._thread = threading.Thread(target=self._run, name="cpu-trace", daemon=True)

    def _sample(self) -> None:
        me = resource.getrusage(resource.RUSAGE_SELF)
        child = process_cpu_seconds(self.pid)
        if child or not self.samples:
            self.samples.append((time.time(), child, me.ru_utime + me.ru_stime, process_cpu_seconds(self.other_pid)))

    def _run(self) -> None:
        while not self._done:
            self._sample()
            time.sleep(self.period)

    def __enter__(self) -> CpuTrace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done = True
        self._thread.join()

    def between(self, start: float, end: float) -> tuple[float, float, float] | None:
        """(child, this process, the other one) CPU seconds from `start` to `end` (Unix times), interpolated."""
        if len(self.samples) < 2:
            return None

        def at(moment: float) -> np.ndarray:
            times = [row[0] for row in self.samples]
            return np.array([np.interp(moment, times, [row[i] for row in self.samples]) for i in (1, 2, 3)])

        child, me, other = at(end) - at(start)
        return float(child), float(me), float(other)


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


def synchronize(device: str) -> None:
    """Wait for the device's queued work: a GPU runs asynchronously, and a clock read before it is done lies."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def autocast(device: str, bf16: bool):
    import contextlib

    import torch

    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def bench_tower(model, batch_size: int, bf16: bool, *, at_once: int = 1, min_seconds: float = 8.0,
                min_batches: int = 4, device: str = "cpu") -> float:
    """(b) img/s: the CLIP vision tower and projection on ready 224x224 tensors, batched; `at_once` threads
    each running batches (with torch's threads as they are set)."""
    import torch

    clip = model[0].auto_model
    side = clip.config.vision_config.image_size
    pixels = torch.randn(batch_size, 3, side, side, device=device)

    def run(deadline: float | None) -> int:
        done = 0
        with torch.inference_mode(), autocast(device, bf16):
            while deadline is None or done < min_batches or time.perf_counter() < deadline:
                clip.get_image_features(pixel_values=pixels)
                done += 1
                if deadline is None:
                    break
        synchronize(device)
        return done

    run(None)  # warm-up
    with concurrent.futures.ThreadPoolExecutor(max_workers=at_once) as pool:
        started = time.perf_counter()
        done = sum(pool.map(run, [started + min_seconds] * at_once))
        elapsed = time.perf_counter() - started
    return done * batch_size / elapsed


def device_pixels(datas: list, recipe, device: str):
    """(n, 3, h, w) float tensor on `device` from JPEG bytes (uint8 tensors): decoded there in one batch
    (torchvision's decode_jpeg: nvJPEG on CUDA), then resized (bicubic, antialiased), centre-cropped, rescaled and
    normalised as `recipe` (the model's image processor, see pipelines.embedding.PixelRecipe) says; images of one
    size are resized together."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    decoded = decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    out_h, out_w = recipe.output_size
    pixels = torch.empty((len(decoded), 3, out_h, out_w), dtype=torch.float32, device=device)
    by_size: dict[tuple[int, int], list[int]] = {}
    for i, image in enumerate(decoded):
        by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
    for (height, width), members in by_size.items():
        new_w, new_h = recipe.resized_size(width, height)
        batch = torch.stack([decoded[i] for i in members]).float()
        resized = torch.nn.functional.interpolate(batch, size=(new_h, new_w), mode="bicubic", antialias=True,
                                                  align_corners=False).clamp_(0, 255)
        top, left = (new_h - out_h) // 2, (new_w - out_w) // 2
        pixels[members] = resized[:, :, top:top + out_h, left:left + out_w]
    if recipe.scale != 1.0:
        pixels.mul_(recipe.scale)
    if recipe.mean is not None and recipe.std is not None:
        mean = torch.tensor(recipe.mean, device=device).view(1, 3, 1, 1)
        std = torch.tensor(recipe.std, device=device).view(1, 3, 1, 1)
        pixels.sub_(mean).div_(std)
    return pixels


def bench_device_decode(model, paths: list[Path], batch_size: int, bf16: bool, device: str,
                        reference: np.ndarray) -> tuple[float, int, float]:
    """(e) img/s from JPEG bytes in memory to L2-normalised vectors, decoding on `device`; returns (img/s,
    images, minimum cosine of the vectors of the first images against `reference`, the embedding module's)."""
    import torch

    from pipelines.embedding import pixel_recipe

    recipe = pixel_recipe(model)
    if recipe is None:
        raise SystemExit("(e) needs a CLIP-style image processor (see pipelines.embedding.pixel_recipe)")
    datas = [torch.frombuffer(bytearray(p.read_bytes()), dtype=torch.uint8) for p in paths]

    def embed(batch: list) -> torch.Tensor:
        # Through the model's own modules, as the embedding module runs them on prepared pixels.
        with torch.inference_mode(), autocast(device, bf16):
            features = model({"pixel_values": device_pixels(batch, recipe, device), "modality": "image"})
        features = features["sentence_embedding"].float()
        return features / features.norm(dim=1, keepdim=True).clamp_min(1e-12)

    first = embed(datas[:len(reference)]).cpu().numpy()
    cosine = float((first * reference).sum(axis=1).min())
    embed(datas[:batch_size])  # warm-up at this batch size
    synchronize(device)
    started = time.perf_counter()
    for start in range(0, len(datas), batch_size):
        embed(datas[start:start + batch_size])
    synchronize(device)
    return len(datas) / (time.perf_counter() - started), len(datas), cosine


def bench_embed(embedder, paths: list[Path], batch_size: int, window: int,
                workers: int) -> tuple[float, int, dict[str, float]]:
    """(c) img/s: read + load_image in a thread pool (as the fetch stage's asyncio.to_thread does) while the
    model embeds earlier batches, `embedder.concurrency` at once (as the embed stage's workers do); at most
    `window` images decoded ahead (the crawl's CONCURRENT_ITEMS). Also the CPU seconds of the timed part: this
    process's, and the decoding's and the model's (their threads', as the crawl's stages count theirs)."""
    from pipelines import imaging
    from pipelines.batching import StageCpu

    def load(path: Path):
        return imaging.load_image(path.read_bytes())

    warm = [load(p).image for p in paths[:batch_size]]
    embedder.embed_images(warm)  # warm-up at this batch size
    del warm
    decode_cpu, model_cpu = StageCpu(None, "decode"), StageCpu(None, "embed")
    at_once = embedder.concurrency
    decoding: deque[concurrent.futures.Future] = deque()
    embedding: deque[tuple[concurrent.futures.Future, int]] = deque()
    embedded = 0
    todo = iter(paths)

    def top_up() -> None:
        for path in todo:
            decoding.append(decoders.submit(decode_cpu.run, load, path))
            if len(decoding) >= window:
                break

    def finish_one() -> None:
        nonlocal embedded
        future, count = embedding.popleft()
        vectors = future.result()
        assert vectors.shape[0] == count and vectors.dtype == np.float32
        embedded += count

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="decode") as decoders, \
            concurrent.futures.ThreadPoolExecutor(max_workers=at_once, thread_name_prefix="embed") as models:
        started, own = time.perf_counter(), _own_cpu_seconds()
        top_up()
        while decoding:
            batch = [decoding.popleft().result().image for _ in range(min(batch_size, len(decoding)))]
            top_up()  # before the model call, so decoding runs during it
            while len(embedding) >= at_once:
                finish_one()
            embedding.append((models.submit(model_cpu.run, embedder.embed_images, batch), len(batch)))
        while embedding:
            finish_one()
        elapsed = time.perf_counter() - started
        own = _own_cpu_seconds() - own
    return embedded / elapsed, embedded, {"all": own, "model": model_cpu.seconds, "decode": decode_cpu.seconds}


def decode_cost_ms(paths: list[Path], count: int = 40) -> float:
    from pipelines import imaging

    datas = [p.read_bytes() for p in paths[:count]]
    started = time.perf_counter()
    for data in datas:
        imaging.load_image(data)
    return (time.perf_counter() - started) / len(datas) * 1000


def bench_crawl(paths: list[Path], pages: int, models: tuple[Path, Path], scratch: Path, es_pid: int | None,
                concurrency: int, log_path: Path, device: str = "cpu", batch_size: int | None = None) -> dict:
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
        "IMGSEARCH_PROGRESS_SECONDS": "0.5",  # for steady_rate()
        "DOWNLOAD_DELAY": "0",
        "AUTOTHROTTLE_ENABLED": "false",
        "CONCURRENT_REQUESTS": str(concurrency),
        "CONCURRENT_REQUESTS_PER_DOMAIN": str(concurrency),
        "HF_HUB_OFFLINE": "1",
        "IMGSEARCH_EMBED_DEVICE": device,
        **({"IMGSEARCH_EMBED_BATCH_SIZE": str(batch_size)} if batch_size else {}),
    }
    with SiteServer(site_routes(paths, pages)) as site:
        # http.server listens with a backlog of 5: the crawl's burst of connections would overflow it, and
        # SYN retries (1, 3, 7, 15 s...) would then be measured instead of the pipeline.
        site.httpd.socket.listen(max(128, concurrency * 2))
        command = [sys.executable, "-m", "cli", "crawl", site.url + "/", "--depth", "1",
                   "--stats-file", str(stats_file)]
        with open(log_path, "wb") as log, CpuWatch(es_pid) as watch:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                with CpuTrace(process.pid, es_pid) as trace:
                    # wait4, not wait: it also gives the crawl process's own peak RSS and CPU time.
                    _, status, usage = os.wait4(process.pid, 0)
            except BaseException:
                process.kill()
                process.wait()
                raise
            process.returncode = os.waitstatus_to_exitcode(status)
        try:
            stats = json.loads(stats_file.read_text())
        except (OSError, ValueError):
            stats = {}
        finally:
            _delete_index(index)
    if process.returncode != 0 or not stats:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"the crawl failed (exit {process.returncode}):\n{tail}")
    stats["_rss_mib"] = usage.ru_maxrss / 1024
    stats["_cpu_seconds"] = usage.ru_utime + usage.ru_stime
    stats["_steady"] = steady_rate(log_path.read_text(errors="replace"), stats.get("imgsearch/index/indexed", 0))
    stats["_cpu"] = watch
    try:
        start, finish = (datetime.fromisoformat(str(stats[k])).timestamp() for k in ("start_time", "finish_time"))
        stats["_crawl_cpu"] = trace.between(start, finish)
    except (KeyError, ValueError):
        stats["_crawl_cpu"] = None
    stats["_wall"] = watch.wall
    stats["_index"] = index
    return stats


_PROGRESS = re.compile(r"Progress: .*?indexed (\d+) .*?; ([\d.]+) indexed/s over")


def steady_rate(log: str, total: int, low: float = 0.1, high: float = 0.9) -> float | None:
    """img/s between `low` and `high` of `total` indexed, from the crawl's progress lines (the start-up before
    the first batch and the last flushes left out). Each line gives indexed / elapsed, so its time follows."""
    points = [(int(n), int(n) / float(rate)) for n, rate in _PROGRESS.findall(log) if float(rate) > 0]
    inside = [(n, t) for n, t in points if low * total <= n <= high * total]
    if len(inside) < 2 or inside[-1][1] <= inside[0][1]:
        return None
    (n1, t1), (n2, t2) = inside[0], inside[-1]
    return (n2 - n1) / (t2 - t1)


def print_cpu_budget(crawl_cpu: tuple[float, float, float], stats: dict, indexed: int, elapsed: float,
                     c_cpu: dict[str, float], c_images: int, c: float) -> None:
    """Where (d)'s CPU went, per image, beside (c)'s; and d/c as the product of two factors: (c)'s CPU per image
    over the crawl's (the crawl's extra work), and the crawl's busy cores over (c)'s (how well its work overlaps).
    An image rate is busy cores / CPU per image, so the product is d/c exactly."""
    crawl, server, elasticsearch = (seconds / indexed * 1000 for seconds in crawl_cpu)
    model = stats.get("imgsearch/embed/cpu_seconds", 0) / indexed * 1000
    fetch = stats.get("imgsearch/fetch/cpu_seconds", 0) / indexed * 1000
    d_all = crawl + server + elasticsearch
    c_all, c_model, c_decode = (c_cpu[k] / c_images * 1000 for k in ("all", "model", "decode"))
    d_busy, c_busy = d_all / 1000 * indexed / elapsed, c_all / 1000 * c
    print(f"    CPU per image from start to finish: crawl process {crawl:.1f} ms = model {model:.1f} + fetch stage "
          f"{fetch:.1f} (decode, hashes, thumbnail, store) + the rest {crawl - model - fetch:.1f} (reactor, Scrapy, "
          f"lookups, bulk requests); Elasticsearch {elasticsearch:.1f}; the site server {server:.1f}: {d_all:.1f} ms "
          f"in all, on {d_busy:.2f} busy cores")
    print(f"    (c) per image: {c_all:.1f} ms = model {c_model:.1f} + decode {c_decode:.1f} + the rest "
          f"{c_all - c_model - c_decode:.1f}, on {c_busy:.2f} busy cores")
    print(f"    d/c = {c_all / d_all * d_busy / c_busy:.2f} = {c_all / d_all:.2f} (CPU per image, (c)'s over the "
          f"crawl's, all processes) x {d_busy / c_busy:.2f} (busy cores, the crawl's over (c)'s)")


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
    parser.add_argument("--crawl-log", type=Path, help="keep the crawl's log in this file")
    parser.add_argument("--quiet-wait", type=float, default=120, metavar="SECONDS",
                        help="before each measurement, wait up to this long for other processes to go quiet")
    parser.add_argument("--skip-crawl", action="store_true", help="measure (a)-(c) only")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu (default), cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, help="images per model call (default: IMGSEARCH_EMBED_BATCH_SIZE "
                                                       "if set, else the CPU or GPU size for --device)")
    parser.add_argument("--device-decode", action="store_true",
                        help="measure (e), decoding on the device, on a CPU too (always done with cuda)")
    args = parser.parse_args(argv)
    if args.images < 2 or args.naive < 2:
        parser.error("--images and --naive need at least 2")

    import torch

    from crawler.settings import embed_batch_size
    from pipelines.embedding import Embedder, cpu_has_bf16, throughput_plan

    device = args.device.strip().lower()
    if device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}, CUDA build "
                     f"{torch.version.cuda or 'none'})")
    if device != "cpu" and not device.startswith("cuda"):
        parser.error("--device: cpu, cuda or cuda:N")
    paths = ensure_images(args.cache / IMAGE_SET, args.images)
    models = ensure_models(args.cache / "models-full")
    batch_size = args.batch_size or (int(os.environ["IMGSEARCH_EMBED_BATCH_SIZE"])
                                     if os.environ.get("IMGSEARCH_EMBED_BATCH_SIZE") else
                                     embed_batch_size(device, settings.getint("IMGSEARCH_EMBED_BATCH_SIZE_CPU"),
                                                      settings.getint("IMGSEARCH_EMBED_BATCH_SIZE_GPU")))
    window = settings.getint("CONCURRENT_ITEMS")
    workers = min(32, (os.cpu_count() or 1) + 4)  # asyncio.to_thread's default pool, which the fetch stage uses
    sizes = sorted({SIZES[i % len(SIZES)] for i in range(len(paths))})
    total_bytes = sum(p.stat().st_size for p in paths)
    pid = es_pid()

    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores, bf16: {'yes' if cpu_has_bf16() else 'no'}); "
          f"load average {os.getloadavg()[0]:.2f} at start")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; Python {platform.python_version()}")
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(device)
        print(f"Device: {device}, {props.name}, {props.total_memory / 2**30:.0f} GiB, bf16: "
              f"{'yes' if torch.cuda.is_bf16_supported() else 'no'}; CUDA {torch.version.cuda}")
    print(f"Images: {len(paths)} JPEGs (q{QUALITY}), {min(w * h for w, h in sizes) / 1e6:.1f}-"
          f"{max(w * h for w, h in sizes) / 1e6:.1f} MP, {total_bytes / len(paths) / 1e3:.0f} kB each on average; "
          f"model: full-size stand-in ViT-B/32 ({models[0]})")

    default_threads = torch.get_num_threads()
    # What the crawl's embed stage does (EmbedPipeline): this many batches at once, torch threads set so.
    at_once, plan_threads = throughput_plan(device)
    started = time.perf_counter()
    embedder = Embedder(str(models[0]), str(models[1]), batch_size=batch_size, device=device, concurrency=at_once,
                        bf16_min_cosine=settings.getfloat("IMGSEARCH_EMBED_BF16_MIN_COSINE"))
    model = embedder.load_image_model()
    cosine = "not measured" if embedder.bf16_cosine is None else f"{embedder.bf16_cosine:.6f}"
    preprocessing = ("batched here (PixelRecipe), vectors vs encode() min cosine "
                     f"{embedder.fast_path_cosine:.6f}" if embedder.pixel_recipe else "the model's own processor")
    print(f"Embedder: loaded in {time.perf_counter() - started:.1f} s; precision {embedder.precision} (bf16 vs fp32 "
          f"minimum cosine {cosine}); preprocessing {preprocessing}; batch size {batch_size}; in a crawl "
          f"{at_once} batch(es) at once, torch threads {plan_threads or default_threads}")
    print()

    best_bf16 = cpu_has_bf16() if device == "cpu" else torch.cuda.is_bf16_supported()
    wait_until_quiet(args.quiet_wait)
    with CpuWatch() as watch:
        b = bench_tower(model, batch_size, best_bf16, device=device)
    where = f"{default_threads} threads" if device == "cpu" else device
    print(f"(b) bare vision tower, {batch_size} x 224x224 tensors, {'bf16 autocast' if best_bf16 else 'fp32'}, "
          f"{where}: {b:7.1f} img/s   [{watch.describe()}]")

    wait_until_quiet(args.quiet_wait)
    datas = [p.read_bytes() for p in paths[:args.naive]]
    with CpuWatch() as watch:
        a = bench_naive(model, datas)
    del datas
    print(f"(a) naive: full decode + encode([img]) one at a time, fp32 ({args.naive - 1} images):"
          f"{a:7.1f} img/s   [{watch.describe()}]")

    if plan_threads:
        torch.set_num_threads(plan_threads)
    try:
        b_plan = None
        wait_until_quiet(args.quiet_wait)
        if (at_once, plan_threads or default_threads) != (1, default_threads):
            with CpuWatch() as watch:
                b_plan = bench_tower(model, batch_size, best_bf16, at_once=at_once)
            print(f"(b') the same, {at_once} batches at once with {plan_threads} thread(s) each, as the crawl runs "
                  f"it: {b_plan:7.1f} img/s   [{watch.describe()}]")
        wait_until_quiet(args.quiet_wait)
        with CpuWatch() as watch:
            c, embedded, c_cpu = bench_embed(embedder, paths, batch_size, window, workers)
    finally:
        torch.set_num_threads(default_threads)
    print(f"(c) embedding module: load_image in {workers} threads ({window} ahead) + embed_images x {batch_size}, "
          f"{at_once} at once ({embedded} images): {c:7.1f} img/s   [{watch.describe()}]")
    print(f"    load_image alone, one thread: {decode_cost_ms(paths):.1f} ms/img "
          f"(model alone at (b): {1000 / b:.1f} ms/img)")

    e = None
    if device != "cpu" or args.device_decode:
        try:
            import torchvision  # noqa: F401
        except ImportError:
            print("(e) skipped: decoding on the device needs torchvision (pip install torchvision, the build "
                  "matching torch)")
        else:
            from pipelines import imaging

            reference = embedder.embed_images([imaging.load_image(p.read_bytes()).image for p in paths[:16]])
            wait_until_quiet(args.quiet_wait)
            with CpuWatch() as watch:
                e, decoded, e_cosine = bench_device_decode(model, paths, batch_size, best_bf16, device, reference)
            print(f"(e) decode + embed on {device}: decode_jpeg x {batch_size} there, resize/crop/normalise as "
                  f"tensors, tower in {'bf16' if best_bf16 else 'fp32'} ({decoded} images): {e:7.1f} img/s   "
                  f"[{watch.describe()}]; vectors vs (c)'s: min cosine {e_cosine:.4f} (different images: "
                  f"{float((reference[1:] @ reference[0]).min()):.4f})")

    d = None
    if not args.skip_crawl:
        wait_until_quiet(args.quiet_wait)
        with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
            stats = bench_crawl(paths, args.pages, models, Path(tmp), pid, args.concurrency,
                                args.crawl_log or Path(tmp) / "crawl.log", device, batch_size)
        indexed = stats.get("imgsearch/index/indexed", 0)
        elapsed = float(stats["elapsed_time_seconds"])
        d = indexed / elapsed
        watch = stats["_cpu"]
        not_indexed = ", ".join(f"{k} {v}" for k, v in stats.items() if "/failed/" in k or "/skipped/" in k)
        print(f"(d) crawl to indexed: {indexed} of {len(paths)} images indexed in {elapsed:.1f} s from the crawl's "
              f"start (process {stats['_wall']:.1f} s in all, model load included): {d:7.1f} img/s   "
              f"[{watch.describe('elasticsearch')}]")
        steady = stats["_steady"]
        if steady:
            fixed = elapsed - indexed / steady
            print(f"    steady state, from 10% to 90% indexed: {steady:.1f} img/s ({steady / c:.2f} of (c)); "
                  f"{elapsed:.1f} s = {indexed / steady:.1f} s at that rate + {fixed:.1f} s of start-up (pages, "
                  f"first images through the fetch stage) and final flushes")
        crawl_cpu = stats["_crawl_cpu"]
        if crawl_cpu and indexed:
            print_cpu_budget(crawl_cpu, stats, indexed, elapsed, c_cpu, embedded, c)
        print(f"    crawl process CPU {stats['_cpu_seconds']:.1f} s in all, model load included; "
              f"precision {stats.get('imgsearch/embed/precision')}, {stats.get('imgsearch/embed/batches')} "
              f"batches, {stats.get('imgsearch/embed/concurrent_batches')} at once, index {stats['_index']} (deleted), "
              f"not indexed: {not_indexed or 'none'}")
    print()
    print(f"c/b = {c / b:.2f} (target >= 0.8)   " + (f"d/c = {d / c:.2f} (target >= 0.9)   " if d else "")
          + f"c/a = {c / a:.2f} (target >= 2.5)" + (f"   [c/b' = {c / b_plan:.2f}]" if b_plan else ""))
    if e:
        goal = "   (goal on one H100: >= 3000 img/s)" if device.startswith("cuda") else ""
        print(f"e = {e:.1f} img/s decoding on {device}, e/c = {e / c:.2f}{goal}")
    if d:
        print(f"peak RSS: crawl process {stats['_rss_mib']:.0f} MiB, benchmark process {peak_rss_mib():.0f} MiB")
    else:
        print(f"peak RSS: benchmark process {peak_rss_mib():.0f} MiB")
    print(f"CPU {cpu_model()}; device {device}; torch threads {torch.get_num_threads()}; precision "
          f"{embedder.precision}; load average {os.getloadavg()[0]:.2f} at end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
