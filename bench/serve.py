"""Benchmark of `imgsearch serve` under load: latency, throughput, status codes and memory of POST /api/search.

    python bench/serve.py                                   # 10k images; 200 requests from 16 clients
    python bench/serve.py --images 20000 --requests 400 --keep-index

Fills a scratch index, created with the product's own `ensure_indices`, with `--images` synthetic images
(random unit vectors, a perceptual hash for the whole image and 15 crops, one source page each), starts
`imgsearch serve --allow-private` in a subprocess on a free loopback port with the full-size stand-in CLIP models
(random weights, the real models' compute), and sends it requests on 127.0.0.1 only: `--warmup` requests from
`--clients` clients, not counted, then `--baseline` requests from one client (the unloaded latency), then
`--requests` from `--clients` concurrent clients (the load). Requests take turns among three kinds, k=10: image
uploads (generated photo-like 640x480 JPEGs, decoded, hashed and embedded by the server), image URLs (the same
JPEGs, which the server fetches from a photo server this script runs on 127.0.0.1: hence --allow-private,
without which the address guard refuses loopback) and text queries.

For each phase it prints, per kind and overall, the status codes (5xx counted apart), p50 / p99 latency
(client-side wall time), requests/s, and where the time went, from the Server-Timing header the server sends
(web/timing.py): in embedding (the model call, including the wait for the model, which answers one query at a
time), in Elasticsearch (the msearch of the three channels and the sources lookup), and the rest: inside the
query (decoding, perceptual hashes, merging, fetching a URL's image) and outside it (HTTP, upload parsing, JSON,
the thread hand-off). The goal: the rest under 10 % of p50.

Memory: the server's resident set size (psutil, else /proc/PID/status) is sampled every 50 ms throughout; it
prints the RSS after the warm-up and baseline, its peak under load and at the end, and calls the memory flat
when the peak of the load's second half is within max(16 MiB, 2 %) of the first half's. While the load runs, two
100 MB uploads are sent, one declaring its Content-Length and one chunked (no length: only the bytes as they come
tell), both made by a generator as they are sent (the client never holds them either), over a raw socket that
watches for the answer while it sends: it prints the status (413 expected), how long until the answer, how much
had been sent by then (the cap, if the server read that far, plus what the sockets' buffers hold), whether the
server closed the connection (else it would go on reading the rest), and the server's RSS rise meanwhile.

The index is deleted at the end unless --keep-index (then a later run reuses it). This is a script that prints
figures, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import os
import platform
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

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
KINDS = ("image", "url", "text")
OVERSIZED = 100_000_000  # bytes of each oversized upload
RSS_EVERY = 0.05  # seconds between two samples of the server's memory
# "Memory flat": a per-request leak of even 200 kB would add 20 MB over the load's second half.
FLAT_BYTES = 16 * 2**20
FLAT_SHARE = 0.02
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

    from index_setup.indices import ensure_indices, stored_dims
    from pipelines.embedding import model_dims

    dims = stored_dims(client, alias) or model_dims(model)
    ensure_indices(client, alias, dims=dims, model=model)
    have = client.count(index=alias)["count"]
    if have >= count:
        return f"reused ({have} images)"
    started = time.perf_counter()
    ok, errors = helpers.bulk(client.options(request_timeout=300), documents(alias, count, dims, model),
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
        # --allow-private: the image-URL queries point at this script's photo server on 127.0.0.1.
        self.process = subprocess.Popen([sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", "0",
                                         "--allow-private"],
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


# -- the server's memory -------------------------------------------------------------------------------------------
def rss_reader(pid: int) -> tuple[str, Callable[[], int | None]]:
    """(where the figure comes from, a function giving the process's resident set size in bytes, None once gone)."""
    try:
        import psutil
    except ImportError:
        status = Path(f"/proc/{pid}/status")

        def from_proc() -> int | None:
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
            except OSError:
                pass
            return None

        return "VmRSS of /proc/PID/status", from_proc
    process = psutil.Process(pid)

    def from_psutil() -> int | None:
        try:
            return process.memory_info().rss
        except psutil.Error:
            return None

    return "psutil", from_psutil


class RssSampler:
    """The server's RSS every RSS_EVERY seconds, in a thread, each sample with its time.perf_counter()."""

    def __init__(self, pid: int) -> None:
        self.source, self._read = rss_reader(pid)
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.now()
            self._stop.wait(RSS_EVERY)

    def now(self) -> int:
        """Sample now (kept with the others) and return it; 0 once the process is gone."""
        rss = self._read()
        if rss is None:
            return 0
        self.samples.append((time.perf_counter(), rss))
        return rss

    def peak(self, start: float, end: float) -> int:
        return max((rss for at, rss in self.samples if start <= at <= end), default=0)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def mb(size: float) -> str:
    return f"{size / 1e6:.1f} MB"


def memory_report(rss: RssSampler, warm: int, start: float, end: float, final: int) -> None:
    middle = (start + end) / 2
    first, second = rss.peak(start, middle), rss.peak(middle, end)
    growth, allowed = second - first, max(FLAT_BYTES, FLAT_SHARE * warm)
    print(f"Server memory (RSS from {rss.source}, every {RSS_EVERY * 1000:.0f} ms, {len(rss.samples)} samples): "
          f"{mb(warm)} after warm-up, peak {mb(rss.peak(start, end))} under load, {mb(final)} at the end "
          f"({final - warm:+,} bytes since warm-up)")
    tenths = [rss.peak(start + (end - start) * i / 10, start + (end - start) * (i + 1) / 10) for i in range(10)]
    print(f"  peak by tenth of the load (MB): {' '.join(f'{peak / 1e6:.0f}' for peak in tenths)}")
    print(f"  peak of the load's first half {mb(first)}, of its second half {mb(second)}: {growth / 1e6:+.1f} MB, "
          f"{'memory flat' if growth <= allowed else 'MEMORY GROWING'} (allowed {mb(allowed)}: the larger of "
          f"{FLAT_BYTES // 2**20} MiB and {FLAT_SHARE:.0%} of the RSS after warm-up)")


# -- oversized uploads -------------------------------------------------------------------------------------------
@dataclass
class Oversized:
    how: str
    status: int = 0  # 0: no answer
    answered_s: float = float("nan")  # from the first byte sent to the first byte of the answer
    sent: int = 0  # request bytes on the wire by the time the answer came
    closed: bool = False  # whether the server closed the connection after answering
    error: str = ""
    started: float = 0.0
    ended: float = 0.0
    rss_rise: int = 0  # the server's peak RSS while it lasted, less its RSS just before


def multipart_stream(size: int, boundary: str) -> Iterator[bytes]:
    """A `size`-byte multipart body whose one part is an "image" file, made piece by piece as it is sent."""
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="huge.jpg"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = b"\xff\xd8" + bytes(65_534)  # a JPEG's first marker; the server refuses the size before the content
    yield head
    left = size - len(head) - len(tail)
    while left > 0:
        piece = block[:min(left, len(block))]
        left -= len(piece)
        yield piece
    yield tail


def oversized_upload(url: str, size: int, chunked: bool) -> Oversized:
    """POST a `size`-byte image upload to /api/search over a raw socket, watching for the answer between pieces:
    a client that reads only once it has sent everything would not show when the server refused."""
    result = Oversized("chunked, no length" if chunked else "Content-Length")
    boundary = "bench-oversized"
    length = "Transfer-Encoding: chunked" if chunked else f"Content-Length: {size}"
    parts = urlsplit(url)
    pieces: Iterator[bytes] = multipart_stream(size, boundary)
    if chunked:
        pieces = itertools.chain((b"%x\r\n%s\r\n" % (len(p), p) for p in pieces), [b"0\r\n\r\n"])
    answer = b""
    result.started = time.perf_counter()
    try:
        with socket.create_connection((parts.hostname, parts.port), timeout=60) as conn:
            conn.sendall(f"POST /api/search HTTP/1.1\r\nHost: {parts.netloc}\r\n{length}\r\n"
                         f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode())
            conn.setblocking(False)
            pending = b""
            try:
                while True:
                    pending = pending or next(pieces, b"")
                    if not pending:
                        break
                    readable, writable, _ = select.select([conn], [conn], [], 60)
                    if readable:
                        break  # the answer, or the close, came while the body was being sent
                    if not writable:
                        result.error = "sending stalled for 60 s"
                        break
                    done = conn.send(pending)
                    result.sent += done
                    pending = pending[done:]
            except (BrokenPipeError, ConnectionResetError):
                pass  # closed by the server: its answer, if any, is still there to read
            select.select([conn], [], [], 60)  # at once if the answer came early; after the whole body if not
            answered = time.perf_counter()
            conn.settimeout(60)
            answer, result.closed = read_answer(conn)
    except OSError as exc:
        result.error = result.error or f"{type(exc).__name__}: {exc}"
    result.ended = time.perf_counter()
    status = re.match(rb"HTTP/1\.1 (\d{3}) ", answer)
    if status:
        result.status = int(status.group(1))
        result.answered_s = answered - result.started
    elif not result.error:
        result.error = "no answer"
    return result


def read_answer(conn: socket.socket) -> tuple[bytes, bool]:
    """The response (headers and its Content-Length of body), and whether the server then closed the connection."""
    answer = b""
    try:
        while True:
            head, found, body = answer.partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
            if found and length and len(body) >= int(length.group(1)):
                break
            chunk = conn.recv(65_536)
            if not chunk:
                return answer, True
            answer += chunk
        conn.settimeout(2)  # a server that keeps the connection open is waiting for the rest of the upload
        return answer, conn.recv(1) == b""
    except ConnectionResetError:
        return answer, True
    except TimeoutError:
        return answer, False


def oversized_report(uploads: list[Oversized], limit: int) -> None:
    print(f"{OVERSIZED / 1e6:.0f} MB uploads sent during the load (generated as sent; the server's cap "
          f"{mb(limit)} with the form's framing):")
    for upload in uploads:
        answer = f"status {upload.status}" if upload.status else "NO ANSWER"
        print(f"  {upload.how:<19} {answer} after {upload.answered_s:.3f} s, {mb(upload.sent)} of "
              f"{mb(OVERSIZED)} sent by then; connection {'closed' if upload.closed else 'LEFT OPEN'} by the "
              f"server; server RSS {upload.rss_rise / 1e6:+.1f} MB meanwhile"
              + (f"; {upload.error}" if upload.error else ""))


# -- the clients -----------------------------------------------------------------------------------------------
@dataclass
class Sample:
    kind: str
    latency_ms: float
    status: int  # 0: no answer (the client's error)
    embed_ms: float = 0.0
    es_ms: float = 0.0
    search_ms: float = 0.0


@dataclass
class Queries:
    images: list[bytes]
    photos_url: str  # where the photo server serves the same images, as /q/<i>.jpg
    texts: tuple[str, ...] = field(default=TEXTS)


def query_images(count: int) -> list[bytes]:
    from crawler.sample_site import encode, photo_like

    return [encode(photo_like(10_000 + i, 640, 480)) for i in range(count)]


def send(session: requests.Session, url: str, n: int, queries: Queries) -> Sample:
    kind = KINDS[n % len(KINDS)]
    image = n % len(queries.images)
    started = time.perf_counter()
    try:
        if kind == "image":
            response = session.post(url + "/api/search", data={"k": "10"}, timeout=120,
                                    files={"image": ("q.jpg", queries.images[image], "image/jpeg")})
        elif kind == "url":
            response = session.post(url + "/api/search", timeout=120,
                                    json={"image_url": f"{queries.photos_url}/q/{image}.jpg", "k": 10})
        else:
            response = session.post(url + "/api/search", json={"text": queries.texts[n % len(queries.texts)],
                                                               "k": 10}, timeout=120)
    except requests.RequestException:
        return Sample(kind, (time.perf_counter() - started) * 1000, 0)
    latency = (time.perf_counter() - started) * 1000
    sample = Sample(kind, latency, response.status_code)
    for name, value in re.findall(r"(\w+);dur=([\d.]+)", response.headers.get("server-timing", "")):
        setattr(sample, f"{name}_ms", float(value))
    return sample


def run_phase(url: str, requests_count: int, clients: int, queries: Queries, first: int = 0,
              quarter: threading.Event | None = None) -> tuple[list[Sample], float]:
    """`requests_count` requests from `clients` threads, each taking the next request number; (samples, wall s).
    `quarter` is set when a quarter of the requests have been taken."""
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
                if quarter is not None and n - first >= requests_count // 4:
                    quarter.set()
                sample = send(session, url, n, queries)
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


def statuses(samples: list[Sample]) -> str:
    counts = Counter(s.status for s in samples)
    return ", ".join(f"{status or 'no answer'}: {n}" for status, n in sorted(counts.items()))


def report(title: str, samples: list[Sample], wall: float) -> None:
    server_errors = sum(s.status >= 500 for s in samples)
    unanswered = sum(s.status == 0 for s in samples)
    print(f"{title}: {len(samples)} requests in {wall:.1f} s = {len(samples) / wall:.2f} requests/s; "
          f"status {statuses(samples)}; 5xx: {server_errors}" + (f"; NO ANSWER: {unanswered}" if unanswered else ""))
    print(f"  {'':<6} {'n':>4} {'5xx':>4} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>6} {'embed':>7} {'ES':>7} {'rest':>7}"
          f" {'(in query':>10} {'outside)':>9} {'rest p50 / p50':>18}  status")
    for kind in (*KINDS, "all"):
        chosen = [s for s in samples if kind in ("all", s.kind)]
        if not chosen:
            continue
        answered = [s.latency_ms for s in chosen if s.status]
        line = (f"  {kind:<6} {len(chosen):>4} {sum(s.status >= 500 for s in chosen):>4} "
                f"{percentile(answered, 50):>8.1f} {percentile(answered, 99):>8.1f} {len(chosen) / wall:>6.2f}")
        good = [s for s in chosen if s.status == 200]  # only answered searches carry Server-Timing
        if good:
            total = sum(s.latency_ms for s in good)
            embed = sum(s.embed_ms for s in good) / total
            es = sum(s.es_ms for s in good) / total
            inside = sum(s.search_ms - s.embed_ms - s.es_ms for s in good) / total
            outside = sum(s.latency_ms - s.search_ms for s in good) / total
            p50 = percentile([s.latency_ms for s in good], 50)
            rest_p50 = statistics.median(s.latency_ms - s.embed_ms - s.es_ms for s in good)
            line += (f" {embed:>7.1%} {es:>7.1%} {inside + outside:>7.1%} {inside:>10.1%} {outside:>9.1%} "
                     f"{rest_p50:>8.1f} ms = {rest_p50 / p50:>5.1%}")
        print(f"{line}  {statuses(chosen)}")


# -- main ------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from crawler.config import load_settings
    from crawler.sample_site import Route, SiteServer
    from index_setup.client import es_client
    from index_setup.indices import delete_indices
    from pipelines.standin_models import build_models
    from web.security import FORM_OVERHEAD

    settings = load_settings()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the scratch index (default 10000)")
    parser.add_argument("--requests", type=int, default=200, help="requests of the load (default 200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the load (default 16)")
    parser.add_argument("--warmup", type=int, default=48,
                        help="requests sent first from --clients clients, not counted (default 48)")
    parser.add_argument("--baseline", type=int, default=21, help="then requests from one client (default 21)")
    parser.add_argument("--no-oversized", dest="oversized", action="store_false",
                        help="leave out the two 100 MB uploads during the load")
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
    server = rss = None
    images = query_images(QUERY_IMAGES)
    photos = {f"/q/{i}.jpg": Route(data, "image/jpeg") for i, data in enumerate(images)}
    try:
        print(f"Index {args.index}: {ensure_index(client, args.index, args.images, str(models[0]))}")
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch, SiteServer(photos) as photo_server:
            started = time.perf_counter()
            server = Server(args.index, models, Path(scratch) / "serve.log")
            server.wait(600)
            rss = RssSampler(server.process.pid)
            print(f"imgsearch serve at {server.url}: up in {time.perf_counter() - started:.1f} s (full-size stand-in "
                  f"ViT-B/32 and multilingual DistilBERT, models loaded at start), RSS {mb(rss.now())}")
            queries = Queries(images, photo_server.url)
            print(f"Queries, in turn: image uploads of {len(images)} generated 640x480 JPEGs "
                  f"({sum(map(len, images)) / len(images) / 1e3:.0f} kB each on average), the same JPEGs as image "
                  f"URLs on {photo_server.url}, and {len(TEXTS)} texts; k=10, num_candidates=100")
            # From as many clients as the load: the server's threads and their allocator arenas are made here,
            # so that the RSS after warm-up is the level the load should keep.
            run_phase(server.url, args.warmup, args.clients, queries, first=10_000)
            print()
            report("1 client (unloaded)", *run_phase(server.url, args.baseline, 1, queries))
            warm = rss.now()

            quarter = threading.Event()
            uploads: list[Oversized] = []

            def send_oversized() -> None:
                quarter.wait()
                for chunked in (False, True):
                    # Sampled on both sides too: a refusal can take less time than the sampler's period.
                    before = rss.now()
                    upload = oversized_upload(server.url, OVERSIZED, chunked)
                    upload.rss_rise = max(rss.peak(upload.started, upload.ended), rss.now()) - before
                    uploads.append(upload)

            sender = threading.Thread(target=send_oversized, name="oversized", daemon=True)
            if args.oversized:
                sender.start()
            load_start = time.perf_counter()
            samples, wall = run_phase(server.url, args.requests, args.clients, queries, first=args.baseline,
                                      quarter=quarter)
            load_end = time.perf_counter()
            quarter.set()  # a load too short to reach its quarter still gets its oversized uploads
            if args.oversized:
                sender.join()
            final = rss.now()
            print()
            report(f"{args.clients} concurrent clients", samples, wall)
            print(f"\nLoad average {os.getloadavg()[0]:.2f} at the end. embed: the model call (with its wait for the "
                  f"model, one query at a time); ES: Elasticsearch calls; rest: in the query (decode, hashes, "
                  f"merge, fetching a URL's image) and outside it (HTTP, upload parsing, JSON, thread hand-off).\n")
            memory_report(rss, warm, load_start, load_end, final)
            if uploads:
                oversized_report(uploads, settings.getint("IMGSEARCH_SERVE_MAX_UPLOAD_BYTES") + FORM_OVERHEAD)
    finally:
        if rss is not None:
            rss.stop()
        if server is not None:
            server.stop()
        if not args.keep_index:
            delete_indices(client, args.index)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
