"""The one embedding module: CLIP vectors for crawled images, query images and query texts.

Indexing and querying both go through `Embedder`, and images always reach it through
`pipelines.imaging.load_image`, so the two sides can never preprocess differently. Vectors are
L2-normalised float32.

`EmbedPipeline` is the crawl's embed stage: it batches images across items (by size and by time) and runs
the model in one worker thread, off Scrapy's reactor.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from scrapy.exceptions import DropItem

from pipelines.batching import Batcher

if TYPE_CHECKING:
    from PIL import Image
    from scrapy.crawler import Crawler
    from scrapy.settings import Settings
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

HUB_PROBE_SECONDS = 3.0


class ModelUnavailable(Exception):
    """A model cannot be loaded; the message says why and how to provide it."""


def _hub_cached(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "modules.json"), str)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@functools.lru_cache(maxsize=1)
def hub_reachable(timeout: float = HUB_PROBE_SECONDS) -> bool:
    """A quick TCP probe of the model hub: without it a missing route costs over a minute of retries."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)

    def connect() -> bool:
        with socket.create_connection((host, port), timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout + 0.5)  # DNS can hang past the socket timeout
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def unavailable_message(name: str, setting: str, reason: str) -> str:
    cache = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return (f"cannot load the model '{name}': {reason}. Download it once where the hub is reachable "
            f"(python -c \"from sentence_transformers import SentenceTransformer as S; S('{name}')\") and copy "
            f"the cache folder (HF_HOME, here {cache}) to this machine, or set {setting} to a local copy of the "
            f"model folder")


def check_model(name: str, setting: str) -> dict[str, Any]:
    """Where the model will come from, decided quickly and without loading it.

    Returns SentenceTransformer arguments; raises ModelUnavailable when it cannot be had.
    """
    local = Path(name).expanduser()
    if local.is_dir():
        return {"model_name_or_path": str(local)}
    if local.is_absolute() or name.startswith("."):
        raise ModelUnavailable(f"model folder {name} does not exist ({setting})")
    if _hub_cached(name):
        return {"model_name_or_path": name, "local_files_only": True}
    if _offline():
        raise ModelUnavailable(unavailable_message(name, setting, "offline mode is set (HF_HUB_OFFLINE) and it is "
                                                                  "not in the local cache"))
    if not hub_reachable():
        raise ModelUnavailable(unavailable_message(name, setting, "the model hub is not reachable from here and it "
                                                                  "is not in the local cache"))
    return {"model_name_or_path": name}


def load_model(name: str, *, device: str, setting: str) -> SentenceTransformer:
    """Load a sentence-transformers model from a local folder or the hub, failing fast and plainly."""
    from sentence_transformers import SentenceTransformer

    kwargs = check_model(name, setting)
    try:
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # per-tensor loading bars, in the middle of our logs
    except ImportError:
        pass
    try:
        return SentenceTransformer(**kwargs, device=device)
    except Exception as exc:  # the libraries raise many kinds; all mean the same to the user
        raise ModelUnavailable(unavailable_message(name, setting, f"{type(exc).__name__}: {exc}")) from exc


def resolve_device(device: str) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def probe_images(count: int = 8, side: int = 224) -> list[Image.Image]:
    """Deterministic, photo-like test images (gradients, shapes and noise) for precision checks."""
    from PIL import Image

    rng = np.random.default_rng(1234)
    images = []
    y, x = np.mgrid[0:side, 0:side] / side
    for i in range(count):
        base = np.stack([np.sin(x * (i + 1) * 3), np.cos(y * (i + 2) * 2), x * y], axis=-1)
        noise = rng.normal(0, 0.15, size=(side, side, 3))
        pixels = np.clip((base * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Embedder:
    """Loads the image model (and the text model on first use) once; thread-safe, blocking calls."""

    def __init__(self, image_model: str, text_model: str, *, device: str = "auto", bf16_min_cosine: float = 0.99,
                 batch_size: int = 32) -> None:
        self.image_model_name = image_model
        self.text_model_name = text_model
        self.device_setting = device
        self.bf16_min_cosine = float(bf16_min_cosine)
        self.batch_size = int(batch_size)
        self.precision = "fp32"
        self.bf16_cosine: float | None = None
        self._image_model: SentenceTransformer | None = None
        self._text_model: SentenceTransformer | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Embedder:
        return cls(settings.get("IMGSEARCH_IMAGE_MODEL"), settings.get("IMGSEARCH_TEXT_MODEL"),
                   device=settings.get("IMGSEARCH_EMBED_DEVICE"),
                   bf16_min_cosine=settings.getfloat("IMGSEARCH_EMBED_BF16_MIN_COSINE"),
                   batch_size=settings.getint("IMGSEARCH_EMBED_BATCH_SIZE"))

    @property
    def device(self) -> str:
        return resolve_device(self.device_setting)

    def load_image_model(self) -> SentenceTransformer:
        with self._lock:
            if self._image_model is None:
                model = load_model(self.image_model_name, device=self.device, setting="IMGSEARCH_IMAGE_MODEL")
                self._image_model = model
                self._choose_precision(model)
            return self._image_model

    def load_text_model(self) -> SentenceTransformer:
        with self._lock:
            if self._text_model is None:
                model = load_model(self.text_model_name, device=self.device, setting="IMGSEARCH_TEXT_MODEL")
                self._text_model = model
            return self._text_model

    @property
    def dims(self) -> int:
        model = self.load_image_model()
        # renamed in sentence-transformers 6; the old name still works there with a warning
        dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(dimension())

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dims) L2-normalised float32 vectors of RGB images prepared by `imaging.load_image`."""
        model = self.load_image_model()
        if not images:
            return np.zeros((0, self.dims), dtype=np.float32)
        with self._lock:
            return self._encode(model, list(images), bf16=self.precision == "bf16")

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dims) L2-normalised float32 vectors of query texts, in the image vectors' space."""
        model = self.load_text_model()
        with self._lock:
            vectors = self._encode(model, list(texts), bf16=False)
        # Checked against the image model only when it is loaded anyway: loading it just to compare would
        # double a text query's start-up; the index refuses a vector of other dimensions in any case.
        image_dims = self.dims if self._image_model is not None else vectors.shape[1]
        if vectors.shape[1] != image_dims:
            raise ModelUnavailable(f"the text model {self.text_model_name} gives {vectors.shape[1]}-d vectors but "
                                   f"the image model {self.image_model_name} gives {image_dims}-d ones: they do "
                                   f"not share a space")
        return vectors

    def _encode(self, model: SentenceTransformer, inputs: list[Any], *, bf16: bool) -> np.ndarray:
        import torch

        with torch.inference_mode():
            if bf16:
                with torch.autocast("cpu", dtype=torch.bfloat16):
                    out = model.encode(inputs, batch_size=self.batch_size, convert_to_tensor=True,
                                       show_progress_bar=False)
            else:
                out = model.encode(inputs, batch_size=self.batch_size, convert_to_tensor=True,
                                   show_progress_bar=False)
        vectors = out.float().cpu().numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def _choose_precision(self, model: SentenceTransformer) -> None:
        # bf16 roughly doubles CPU throughput where the hardware has it, but only counts if the vectors stay
        # close to fp32 ones; measured once per load on fixed probe images.
        if self.device != "cpu" or self.bf16_min_cosine <= 0 or not cpu_has_bf16():
            return
        probes = probe_images()
        fp32 = self._encode(model, probes, bf16=False)
        bf16 = self._encode(model, probes, bf16=True)
        self.bf16_cosine = float(_cosines(fp32, bf16).min())
        if self.bf16_cosine >= self.bf16_min_cosine:
            self.precision = "bf16"
        logger.info("Image model %s on %s: bf16 vs fp32 minimum cosine %.4f -> %s", self.image_model_name,
                    self.device, self.bf16_cosine, self.precision)


class EmbedPipeline:
    """Embed stage: batches images from concurrent items, runs the model in one worker thread."""

    def __init__(self, *, crawler: Crawler, embedder: Embedder, batch_size: int, max_wait: float) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.embedder = embedder
        self.batch_size = batch_size
        self.max_wait = max_wait
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._batcher: Batcher[Image.Image, np.ndarray] | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> EmbedPipeline:
        settings = crawler.settings
        return cls(crawler=crawler, embedder=Embedder.from_settings(settings),
                   batch_size=settings.getint("IMGSEARCH_EMBED_BATCH_SIZE"),
                   max_wait=settings.getfloat("IMGSEARCH_EMBED_FLUSH_SECONDS"))

    async def open_spider(self) -> None:
        # One thread: the model already uses every core; more threads would only contend.
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgsearch-embed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.embedder.load_image_model)
        self.stats.set_value("imgsearch/embed/precision", self.embedder.precision)
        self._batcher = Batcher(self._embed_batch, size=self.batch_size, max_wait=self.max_wait)

    async def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.embedder.embed_images, images)
        self.stats.inc_value("imgsearch/embed/batches")
        return vectors

    async def process_item(self, item: Any) -> Any:
        """Attach `image_embedding` (and `model`) to an item carrying a decoded `image`."""
        if item.get("known"):
            return item
        assert self._batcher is not None, "open_spider was not called"
        image = item.pop("image")
        try:
            vector = await self._batcher.submit(image)
        except Exception as exc:
            self.stats.inc_value("imgsearch/embed/failed/model_error")
            logger.warning("Embedding failed for %s: %s: %s", item.get("image_url"), type(exc).__name__, exc)
            raise DropItem("embed failed: model_error") from exc
        item["image_embedding"] = vector.tolist()
        item["model"] = self.embedder.image_model_name
        self.stats.inc_value("imgsearch/embed/embedded")
        return item

    async def close_spider(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
