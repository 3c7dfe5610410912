"""The one embedding module: CLIP vectors for crawled images, query images and query texts.

Indexing and querying both go through `Embedder`, and images always reach it through
`pipelines.imaging.load_image`, so the two sides can never preprocess differently. Vectors are
L2-normalised float32.

`EmbedPipeline` is the crawl's embed stage: it batches images across items (by size and by time) and runs
the model in worker threads, off Scrapy's reactor: on a CPU two batches at once, each on half the cores
(`throughput_plan`).

Pixels are prepared here when the model's image processor is one `PixelRecipe` can express (CLIP's: resize
the shortest side, centre crop, rescale, normalise, read from the loaded model's own processor config): in
batch, outside the model's lock, at a fraction of the processor's cost. Whether the vectors then match
sentence-transformers' own `encode` is checked each time the model loads; if not, `encode` is used.
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
from scrapy.exceptions import DropItem

from pipelines.batching import EMBED_STAGE, FETCH_STAGE, Batcher, Occupancy, StageCpu

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


def embedding_dimension(model: SentenceTransformer) -> int:
    # renamed in sentence-transformers 6; the old name still works there with a warning
    dimension = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
    return int(dimension())


def model_dims(name: str, *, setting: str = "IMGSEARCH_IMAGE_MODEL") -> int:
    """The size of the model's vectors, for a new index. The model is loaded (on the CPU): sentence-transformers
    derives the size from its modules in ways their config files do not share (projections, dense layers)."""
    return embedding_dimension(load_model(name, device="cpu", setting=setting))


def resolve_device(device: str) -> str:
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def throughput_plan(device: str, cores: int | None = None) -> tuple[int, int | None]:
    """How a crawl runs the image model: (batches at once, torch threads for the process, None to leave it).

    On a CPU, two batches at once, each with half the cores. With one batch on all cores, every other thread
    of the crawl costs the model more than its own CPU time: a decoding thread that takes a core stalls all the
    model's threads at their next barrier, and the model's thread waits for the GIL after each operation while
    Scrapy's reactor runs Python. Two half-size batches keep one going while the other waits. Elsewhere (a
    GPU) one batch at a time, and torch's CPU threads are left alone.
    """
    if device != "cpu":
        return 1, None
    if cores is None:
        import torch

        cores = torch.get_num_threads()  # torch's default: the physical cores this process may use
    if cores < 2:
        return 1, None
    return 2, cores // 2


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def probe_images(count: int = 8, side: int = 224,
                 sizes: Sequence[tuple[int, int]] | None = None) -> list[Image.Image]:
    """Deterministic, photo-like test images (gradients, shapes and noise) for precision checks.

    ``count`` squares of ``side`` pixels, or one image per (width, height) in ``sizes``.
    """
    from PIL import Image

    rng = np.random.default_rng(1234)
    images = []
    for i, (width, height) in enumerate(sizes or [(side, side)] * count):
        y, x = np.mgrid[0:height, 0:width]
        x, y = x / width, y / height
        base = np.stack([np.sin(x * (i + 1) * 3), np.cos(y * (i + 2) * 2), x * y], axis=-1)
        noise = rng.normal(0, 0.15, size=(height, width, 3))
        pixels = np.clip((base * 0.5 + 0.5 + noise) * 255, 0, 255).astype(np.uint8)
        images.append(Image.fromarray(pixels, "RGB"))
    return images


# Minimum cosine between vectors from PixelRecipe's preprocessing and from the model's own processor.
FAST_PATH_MIN_COSINE = 0.999

# What `imaging.load_image` hands over (shortest side 224..448, any aspect), so the checks at load time see the
# resizing and cropping that real images get, not only the identity.
_CHECK_SIZES = ((224, 224), (320, 240), (240, 320), (448, 299), (257, 224), (300, 400), (640, 224), (383, 287))


@dataclass(frozen=True)
class PixelRecipe:
    """An image processor's steps as plain values, to apply with Pillow and one batched tensor operation.

    Resize (the shortest side to ``shortest_edge``, keeping the aspect ratio, or to exactly ``size``) with the
    processor's own resample filter, centre crop to ``crop`` (height, width), multiply by ``scale``, then
    normalise with ``mean``/``std``: what CLIP-style image processors do, in the order they do it.
    """

    shortest_edge: int | None
    size: tuple[int, int] | None
    resample: int
    crop: tuple[int, int] | None
    scale: float
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    @property
    def output_size(self) -> tuple[int, int]:
        """(height, width) of every prepared image."""
        if self.crop is not None:
            return self.crop
        assert self.size is not None
        return self.size

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, rounded as transformers' get_resize_output_image_size does."""
        if self.size is not None:
            return self.size[1], self.size[0]
        assert self.shortest_edge is not None
        edge = self.shortest_edge
        if width <= height:
            return edge, int(edge * height / width)
        return int(edge * width / height), edge


# Processor flags that add steps PixelRecipe does not know; any of them set means the model's own path.
_UNSUPPORTED_STEPS = ("do_pad", "do_flip_channel_order", "do_reduce_labels", "do_image_splitting",
                      "do_convert_grayscale", "do_thumbnail", "do_align_long_axis")


def _size_field(size: Any, key: str) -> Any:
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def pixel_recipe(model: SentenceTransformer) -> PixelRecipe | None:
    """The image preprocessing of a sentence-transformers image model as a PixelRecipe, read from the model's
    own image processor config; None when the model or its processor does anything else."""
    modules = list(model)
    first = modules[0] if modules else None
    if "image" not in (getattr(first, "modality_config", None) or {}):
        return None
    processor = getattr(first, "processor", None)
    processor = getattr(processor, "image_processor", processor)
    if processor is None or not callable(getattr(processor, "preprocess", None)):
        return None
    if any(getattr(processor, flag, False) for flag in _UNSUPPORTED_STEPS):
        return None
    if not getattr(processor, "do_resize", False):
        return None
    size = processor.size
    edge = _size_field(size, "shortest_edge")
    height, width = _size_field(size, "height"), _size_field(size, "width")
    extra = [_size_field(size, k) for k in ("longest_edge", "max_height", "max_width", "min_pixels", "max_pixels")]
    if any(v is not None for v in extra):
        return None
    fixed = (int(height), int(width)) if height and width and not edge else None
    if not edge and fixed is None:
        return None
    crop = None
    if getattr(processor, "do_center_crop", False):
        crop_size = processor.crop_size
        crop = (int(_size_field(crop_size, "height") or 0), int(_size_field(crop_size, "width") or 0))
        # The crop must fit inside every resized image: padding is another step.
        limit = fixed or (int(edge), int(edge))
        if not (0 < crop[0] <= limit[0] and 0 < crop[1] <= limit[1]):
            return None
    elif fixed is None:
        return None  # resized images of different shapes cannot be stacked
    try:
        resample = int(processor.resample)
    except (TypeError, ValueError):
        return None
    mean = std = None
    if getattr(processor, "do_normalize", False):
        try:
            mean = tuple(float(v) for v in np.broadcast_to(processor.image_mean, (3,)))
            std = tuple(float(v) for v in np.broadcast_to(processor.image_std, (3,)))
        except (TypeError, ValueError):
            return None
    scale = float(processor.rescale_factor) if getattr(processor, "do_rescale", False) else 1.0
    return PixelRecipe(shortest_edge=int(edge) if edge else None, size=fixed, resample=resample, crop=crop,
                       scale=scale, mean=mean, std=std)


# Above this many times the crop's area, the resized image is a strip whose resize is done on the crop's box only.
STRIP_AREA_RATIO = 4


def prepare_pixels(images: Sequence[Image.Image], recipe: PixelRecipe) -> Any:
    """(n, 3, height, width) float32 tensor of RGB images, as the recipe's image processor would make it."""
    import torch

    out_height, out_width = recipe.output_size
    stacked = np.empty((len(images), out_height, out_width, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        width, height = recipe.resized_size(*image.size)
        if recipe.crop is None or width * height <= STRIP_AREA_RATIO * out_width * out_height:
            # Pillow returns a copy when the size is already right, as the processor's own call does.
            resized = image.resize((width, height), resample=recipe.resample)
            if recipe.crop is not None:
                top, left = (height - out_height) // 2, (width - out_width) // 2
                resized = resized.crop((left, top, left + out_width, top + out_height))
            stacked[i] = np.asarray(resized)
            continue
        # A strip: resize only the part the centre crop keeps, not the whole image (224 x 1.4 M pixels for a
        # 32 x 200,000 strip). Each output pixel maps to the same source point and the filter still reads past
        # the box's edges, but Pillow rounds a little differently (a level here and there), so images of
        # ordinary shapes keep the processor's exact path.
        top, left = (height - out_height) // 2, (width - out_width) // 2
        scale_x, scale_y = image.width / width, image.height / height
        box = (left * scale_x, top * scale_y, (left + out_width) * scale_x, (top + out_height) * scale_y)
        stacked[i] = np.asarray(image.resize((out_width, out_height), resample=recipe.resample, box=box))
    pixels = torch.empty((len(images), 3, out_height, out_width), dtype=torch.float32)
    pixels.copy_(torch.from_numpy(stacked).permute(0, 3, 1, 2))
    if recipe.scale != 1.0:
        pixels.mul_(recipe.scale)
    if recipe.mean is not None and recipe.std is not None:
        pixels.sub_(torch.tensor(recipe.mean).view(1, 3, 1, 1)).div_(torch.tensor(recipe.std).view(1, 3, 1, 1))
    return pixels


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


class Embedder:
    """Loads the image model (and the text model on first use) once; thread-safe, blocking calls."""

    def __init__(self, image_model: str, text_model: str, *, device: str = "auto", bf16_min_cosine: float = 0.99,
                 batch_size: int = 32, concurrency: int = 1) -> None:
        self.image_model_name = image_model
        self.text_model_name = text_model
        self.device_setting = device
        self.bf16_min_cosine = float(bf16_min_cosine)
        self.batch_size = int(batch_size)
        self.precision = "fp32"
        self.bf16_cosine: float | None = None
        # Set at load when the model's image preprocessing can be done here, in batch, with the same result as
        # the model's own processor (checked: fast_path_cosine against sentence-transformers' encode).
        self.pixel_recipe: PixelRecipe | None = None
        self.fast_path_cosine: float | None = None
        self._image_model: SentenceTransformer | None = None
        self._text_model: SentenceTransformer | None = None
        self._lock = threading.Lock()
        # Image batches the model may run at once (see throughput_plan). With one, image batches, texts and
        # loading all take turns on the one lock, as they always did.
        self.concurrency = max(1, int(concurrency))
        self._slots = self._lock if self.concurrency == 1 else threading.BoundedSemaphore(self.concurrency)

    @classmethod
    def from_settings(cls, settings: Settings, *, concurrency: int = 1) -> Embedder:
        return cls(settings.get("IMGSEARCH_IMAGE_MODEL"), settings.get("IMGSEARCH_TEXT_MODEL"),
                   device=settings.get("IMGSEARCH_EMBED_DEVICE"),
                   bf16_min_cosine=settings.getfloat("IMGSEARCH_EMBED_BF16_MIN_COSINE"),
                   batch_size=settings.getint("IMGSEARCH_EMBED_BATCH_SIZE"), concurrency=concurrency)

    @property
    def device(self) -> str:
        return resolve_device(self.device_setting)

    def load_image_model(self) -> SentenceTransformer:
        with self._lock:
            if self._image_model is None:
                model = load_model(self.image_model_name, device=self.device, setting="IMGSEARCH_IMAGE_MODEL")
                self._image_model = model
                # Both checks compare with encode()'s fp32 vectors of the same probe images.
                probes = probe_images(sizes=_CHECK_SIZES)
                reference = self._encode(model, probes, bf16=False)
                self._choose_image_path(model, probes, reference)
                self._choose_precision(model, probes, reference)
            return self._image_model

    def load_text_model(self) -> SentenceTransformer:
        with self._lock:
            if self._text_model is None:
                model = load_model(self.text_model_name, device=self.device, setting="IMGSEARCH_TEXT_MODEL")
                self._text_model = model
            return self._text_model

    @property
    def dims(self) -> int:
        return embedding_dimension(self.load_image_model())

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(n, dims) L2-normalised float32 vectors of RGB images prepared by `imaging.load_image`."""
        model = self.load_image_model()
        if not images:
            return np.zeros((0, self.dims), dtype=np.float32)
        images = list(images)
        bf16 = self.precision == "bf16"
        recipe = self.pixel_recipe
        if recipe is None or any(image.mode != "RGB" for image in images):
            with self._slots:
                return self._encode(model, images, bf16=bf16)
        # Before taking a slot: one caller's batch is resized while another's is in the model.
        pixels = prepare_pixels(images, recipe)
        with self._slots:
            return self._encode_pixels(model, pixels, bf16=bf16)

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

    def _encode_pixels(self, model: SentenceTransformer, pixels: Any, *, bf16: bool) -> np.ndarray:
        """Vectors of prepared pixel tensors, through the model's own modules (as encode runs them)."""
        import contextlib

        import torch

        outputs = []
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(pixels), self.batch_size):
                features = {"pixel_values": pixels[start:start + self.batch_size].to(model.device),
                            "modality": "image"}
                outputs.append(model(features)["sentence_embedding"].float().cpu())
        vectors = torch.cat(outputs).numpy()
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)

    def _encode_images(self, model: SentenceTransformer, images: list[Image.Image], *, bf16: bool) -> np.ndarray:
        if self.pixel_recipe is None:
            return self._encode(model, images, bf16=bf16)
        return self._encode_pixels(model, prepare_pixels(images, self.pixel_recipe), bf16=bf16)

    def _choose_image_path(self, model: SentenceTransformer, probes: list[Image.Image],
                           reference: np.ndarray) -> None:
        # The model's own processor (transformers' PIL backend) costs several milliseconds an image, a tenth of
        # the model's time on a CPU; the same steps done here cost a fraction of that. Used only when the
        # vectors match encode()'s on images of the shapes load_image gives, so queries and the index agree.
        recipe = pixel_recipe(model)
        if recipe is None:
            logger.info("Image model %s: its own image processor prepares the pixels", self.image_model_name)
            return
        fast = self._encode_pixels(model, prepare_pixels(probes, recipe), bf16=False)
        self.fast_path_cosine = float(_cosines(reference, fast).min())
        if self.fast_path_cosine >= FAST_PATH_MIN_COSINE:
            self.pixel_recipe = recipe
        else:
            logger.warning("Image model %s: batched preprocessing gives vectors only %.5f cosine from the model's "
                           "own; using the model's processor (slower)", self.image_model_name,
                           self.fast_path_cosine)

    def _choose_precision(self, model: SentenceTransformer, probes: list[Image.Image],
                          reference: np.ndarray) -> None:
        # bf16 roughly doubles CPU throughput where the hardware has it, but only counts if the vectors stay
        # close to fp32 ones; measured once per load on fixed probe images.
        if self.device != "cpu" or self.bf16_min_cosine <= 0 or not cpu_has_bf16():
            return
        bf16 = self._encode_images(model, probes, bf16=True)
        self.bf16_cosine = float(_cosines(reference, bf16).min())
        if self.bf16_cosine >= self.bf16_min_cosine:
            self.precision = "bf16"
        logger.info("Image model %s on %s: bf16 vs fp32 minimum cosine %.4f -> %s", self.image_model_name,
                    self.device, self.bf16_cosine, self.precision)


class EmbedPipeline:
    """Embed stage: batches images from concurrent items, runs the model in worker threads (throughput_plan)."""

    def __init__(self, *, crawler: Crawler, embedder: Embedder, batch_size: int, max_wait: float,
                 torch_threads: int | None = None) -> None:
        self.crawler = crawler
        self.stats = crawler.stats
        self.embedder = embedder
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.torch_threads = torch_threads
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._batcher: Batcher[Image.Image, np.ndarray] | None = None
        self.occupancy = Occupancy.of(crawler)
        self.cpu = StageCpu(self.stats, "embed")

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> EmbedPipeline:
        settings = crawler.settings
        batches, torch_threads = throughput_plan(resolve_device(settings.get("IMGSEARCH_EMBED_DEVICE")))
        return cls(crawler=crawler, embedder=Embedder.from_settings(settings, concurrency=batches),
                   batch_size=settings.getint("IMGSEARCH_EMBED_BATCH_SIZE"),
                   max_wait=settings.getfloat("IMGSEARCH_EMBED_FLUSH_SECONDS"), torch_threads=torch_threads)

    async def open_spider(self) -> None:
        if self.torch_threads:
            import torch

            # Process-wide (this process only crawls), so that each of the concurrent batches gets its share of
            # the cores. Before any worker thread runs torch: a thread keeps the count it first ran with.
            torch.set_num_threads(self.torch_threads)
        workers = self.embedder.concurrency
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers,
                                                               thread_name_prefix="imgsearch-embed")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.embedder.load_image_model)
        self.stats.set_value("imgsearch/embed/precision", self.embedder.precision)
        self.stats.set_value("imgsearch/embed/concurrent_batches", workers)
        self.stats.set_value("imgsearch/embed/batch_size", self.batch_size)
        self._batcher = Batcher(self._embed_batch, size=self.batch_size, max_wait=self.max_wait,
                                max_in_flight=max(2, workers), spread=workers > 1,
                                upstream_idle=self.occupancy.idle(FETCH_STAGE))
        self.occupancy.watch(self._batcher.poke)

    async def _embed_batch(self, images: list[Image.Image]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        vectors = await loop.run_in_executor(self._executor, self.cpu.run, self.embedder.embed_images, images)
        self.stats.inc_value("imgsearch/embed/batches")
        return vectors

    async def process_item(self, item: Any) -> Any:
        """Attach `image_embedding` (and `model`) to an item carrying a decoded `image`."""
        assert self._batcher is not None, "open_spider was not called"
        if item.get("known"):
            # It left the fetch stage without coming here: images waiting for a batch may be all there is now.
            self._batcher.poke()
            return item
        image = item.pop("image")
        try:
            with self.occupancy.inside(EMBED_STAGE):
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
        self.cpu.report()
