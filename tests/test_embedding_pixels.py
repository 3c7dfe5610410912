"""The Embedder's batched preprocessing gives the model's own processor's pixels and encode()'s vectors."""

from __future__ import annotations

import concurrent.futures
import copy
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from crawler.sample_site import encode, photo_like  # noqa: E402
from pipelines import imaging  # noqa: E402
from pipelines.embedding import Embedder, pixel_recipe, prepare_pixels, probe_images  # noqa: E402


def varied_images() -> list[Image.Image]:
    """What load_image hands over from JPEGs and PNGs of many shapes, plus sizes at the edges of rounding."""
    sources = [((1280, 960), "JPEG"), ((960, 1280), "JPEG"), ((1600, 1067), "JPEG"), ((500, 260), "JPEG"),
               ((240, 320), "PNG"), ((800, 230), "PNG"), ((450, 450), "JPEG"), ((1000, 997), "PNG")]
    images = [imaging.load_image(encode(photo_like(i, w, h), fmt)).image for i, ((w, h), fmt) in enumerate(sources)]
    return images + probe_images(sizes=[(224, 224), (225, 224), (224, 225), (447, 224), (231, 500), (301, 299)])


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def embedder(standin_models) -> Embedder:
    image, text = standin_models
    embedder = Embedder(str(image), str(text), device="cpu", batch_size=4)
    embedder.load_image_model()
    return embedder


def test_recipe_is_read_from_the_models_processor(embedder):
    processor = embedder.load_image_model()[0].processor.image_processor
    recipe = embedder.pixel_recipe
    assert recipe is not None
    assert embedder.fast_path_cosine is not None and embedder.fast_path_cosine >= 0.999
    assert recipe.shortest_edge == processor.size.shortest_edge
    assert recipe.crop == (processor.crop_size.height, processor.crop_size.width)
    assert recipe.resample == int(processor.resample)
    assert recipe.mean == pytest.approx(tuple(processor.image_mean))
    assert recipe.std == pytest.approx(tuple(processor.image_std))
    assert recipe.scale == pytest.approx(processor.rescale_factor)


def test_prepared_pixels_equal_the_processors(embedder):
    processor = embedder.load_image_model()[0].processor.image_processor
    images = varied_images()
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    pixels = prepare_pixels(images, embedder.pixel_recipe)
    assert pixels.shape == expected.shape and pixels.dtype == expected.dtype
    assert float((pixels - expected).abs().max()) < 1e-5


def test_vectors_match_sentence_transformers_encode(embedder):
    model = embedder.load_image_model()
    images = varied_images()
    reference = model.encode(images, convert_to_numpy=True, normalize_embeddings=True)
    vectors = embedder.embed_images(images)  # more images than one batch
    assert vectors.shape == reference.shape and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert cosines(vectors, reference).min() >= 0.999


def test_other_modes_and_empty_input_take_the_models_own_path(embedder):
    rgb = probe_images(sizes=[(300, 240)])[0]
    grey = rgb.convert("L")
    mixed = embedder.embed_images([rgb, grey])
    reference = embedder.load_image_model().encode([rgb, grey], normalize_embeddings=True)
    assert cosines(mixed, reference).min() >= 0.999
    assert embedder.embed_images([]).shape == (0, embedder.dims)


def test_unknown_processor_steps_mean_no_recipe(embedder):
    model = embedder.load_image_model()
    assert pixel_recipe(model) is not None
    clone = copy.deepcopy(model)
    clone[0].processor.image_processor.do_pad = True
    assert pixel_recipe(clone) is None
    clone = copy.deepcopy(model)
    clone[0].processor.image_processor.do_center_crop = False
    assert pixel_recipe(clone) is None  # images of different shapes could not be stacked


def test_concurrent_calls_give_the_same_vectors(embedder):
    images = varied_images()
    serial = [embedder.embed_images(images[i:i + 3]) for i in range(0, len(images), 3)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        parallel = list(pool.map(embedder.embed_images, [images[i:i + 3] for i in range(0, len(images), 3)]))
    for a, b in zip(serial, parallel, strict=True):
        assert np.allclose(a, b, atol=1e-5)


def test_throughput_plan_splits_the_cores_between_two_batches_on_a_cpu_only():
    from pipelines.embedding import throughput_plan

    assert throughput_plan("cpu", cores=2) == (2, 1)
    assert throughput_plan("cpu", cores=16) == (2, 8)
    assert throughput_plan("cpu", cores=1) == (1, None)
    assert throughput_plan("cuda") == (1, None)


def test_two_batches_at_once_give_the_same_vectors(standin_models):
    image, text = standin_models
    embedder = Embedder(str(image), str(text), device="cpu", batch_size=4, concurrency=2)
    images = varied_images()
    reference = embedder.embed_images(images)
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        halves = list(pool.map(embedder.embed_images, [images[:7], images[7:]]))
    assert np.allclose(np.concatenate(halves), reference, atol=1e-5)


def test_strips_are_resized_on_the_crop_only_and_still_match_the_processor(embedder):
    processor = embedder.load_image_model()[0].processor.image_processor
    strips = probe_images(sizes=[(40, 2000), (3000, 60), (230, 1200)])
    expected = processor(images=strips, return_tensors="pt")["pixel_values"]
    pixels = prepare_pixels(strips, embedder.pixel_recipe)
    assert pixels.shape == expected.shape
    # Pillow rounds the box resize a level apart here and there; nothing more.
    assert float((pixels - expected).abs().mean()) < 5e-3  # a third of one level (1/255 is 0.015 here)
    assert float((pixels - expected).abs().max()) < 0.2
