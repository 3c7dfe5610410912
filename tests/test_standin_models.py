"""The stand-in models load with a bare ``SentenceTransformer(folder)`` and encode like the real ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The stand-ins are local folders; make any accidental hub lookup fail at once instead of waiting on the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sentence_transformers import SentenceTransformer  # noqa: E402

from pipelines.standin_models import build_models  # noqa: E402

TEXTS = ["un chat noir", "a red car on a street"]


@pytest.fixture(scope="module")
def model_paths(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_models(tmp_path_factory.mktemp("models"), "tiny")


@pytest.fixture(scope="module")
def image_model(model_paths: tuple[Path, Path]) -> SentenceTransformer:
    return SentenceTransformer(str(model_paths[0]), device="cpu")


@pytest.fixture(scope="module")
def text_model(model_paths: tuple[Path, Path]) -> SentenceTransformer:
    return SentenceTransformer(str(model_paths[1]), device="cpu")


def _images() -> list[Image.Image]:
    noise = np.random.default_rng(0).integers(0, 256, size=(240, 320, 3), dtype=np.uint8)
    return [Image.new("RGB", (300, 200), (200, 30, 30)), Image.fromarray(noise, "RGB")]


def _check_vectors(vectors: np.ndarray, count: int) -> None:
    assert vectors.shape == (count, 512)
    assert np.isfinite(vectors).all()
    # Different inputs must give different vectors, or search over them would be meaningless.
    assert not np.allclose(vectors[0], vectors[1])


def test_image_model_encodes_images(image_model: SentenceTransformer) -> None:
    _check_vectors(image_model.encode(_images()), 2)


def test_image_model_encodes_texts(image_model: SentenceTransformer) -> None:
    _check_vectors(image_model.encode(TEXTS), 2)


def test_image_model_is_a_clip_model(image_model: SentenceTransformer) -> None:
    # The same module class the hub's clip-ViT-B-32 loads through.
    assert type(image_model[0]).__name__ == "CLIPModel"
    assert set(image_model.modalities) >= {"image", "text"}
    assert image_model.get_embedding_dimension() == 512


def test_text_model_encodes_texts(text_model: SentenceTransformer) -> None:
    _check_vectors(text_model.encode(TEXTS), 2)


def test_text_model_is_text_only(text_model: SentenceTransformer) -> None:
    assert text_model.get_embedding_dimension() == 512
    assert list(text_model.modalities) == ["text"]
    with pytest.raises(ValueError):
        text_model.encode(_images())


def test_long_texts_are_truncated(image_model: SentenceTransformer, text_model: SentenceTransformer) -> None:
    long_text = " ".join(["une photo d'un chat noir sur une voiture rouge"] * 60)
    _check_vectors(image_model.encode([long_text, TEXTS[0]]), 2)
    _check_vectors(text_model.encode([long_text, TEXTS[0]]), 2)


def test_build_models_reuses_complete_folders(model_paths: tuple[Path, Path]) -> None:
    weights = model_paths[0] / "0_CLIPModel" / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert build_models(model_paths[0].parent, "tiny") == model_paths
    assert weights.stat().st_mtime_ns == before


def test_builds_are_deterministic(model_paths: tuple[Path, Path], tmp_path: Path) -> None:
    image_path, text_path = build_models(tmp_path, "tiny")
    assert (image_path / "0_CLIPModel" / "model.safetensors").read_bytes() == (
        model_paths[0] / "0_CLIPModel" / "model.safetensors"
    ).read_bytes()
    assert (text_path / "model.safetensors").read_bytes() == (model_paths[1] / "model.safetensors").read_bytes()
    assert (text_path / "2_Dense" / "model.safetensors").read_bytes() == (
        model_paths[1] / "2_Dense" / "model.safetensors"
    ).read_bytes()


def test_build_models_never_replaces_other_folders(tmp_path: Path) -> None:
    (tmp_path / "image").mkdir()
    (tmp_path / "image" / "notes.txt").write_text("not a model")
    with pytest.raises(FileExistsError):
        build_models(tmp_path, "tiny")
    assert (tmp_path / "image" / "notes.txt").read_text() == "not a model"


def test_models_of_other_dims_encode_into_one_space_of_that_size(wide_standin_models: tuple[Path, Path],
                                                                   tmp_path: Path) -> None:
    image_path, text_path = wide_standin_models
    image_model = SentenceTransformer(str(image_path), device="cpu")
    text_model = SentenceTransformer(str(text_path), device="cpu")
    assert image_model.get_embedding_dimension() == text_model.get_embedding_dimension() == 768
    assert image_model.encode(_images()).shape == text_model.encode(TEXTS).shape == (2, 768)
    # A folder of other dims is rebuilt, not reused.
    shutil.copytree(image_path, tmp_path / "image")
    shutil.copytree(text_path, tmp_path / "text")
    image_path, text_path = build_models(tmp_path, "tiny")
    assert SentenceTransformer(str(image_path), device="cpu").get_embedding_dimension() == 512
    assert SentenceTransformer(str(text_path), device="cpu").get_embedding_dimension() == 512
