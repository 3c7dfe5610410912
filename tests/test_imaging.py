"""Tests for pipelines.imaging: every input is generated in memory with Pillow or crafted by hand."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from pipelines import imaging
from pipelines.imaging import (
    DECODE_ERROR,
    EMPTY,
    NOT_IMAGE,
    REASONS,
    SVG,
    TOO_LARGE,
    TOO_MANY_PIXELS,
    TOO_SMALL,
    UNSUPPORTED_FORMAT,
    ImageRejected,
    LoadedImage,
    load_image,
    sniff_format,
)

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
WHITE = (255, 255, 255)
ORIENTATION = 0x0112


def encode(im: Image.Image, fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **params)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """A picture that compresses badly, so a cut through the file lands in the pixel data."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


def quadrant_picture(width: int, height: int) -> Image.Image:
    """Grey, with a red top-left quarter: shows where the stored top-left corner ends up."""
    im = Image.new("RGB", (width, height), (128, 128, 128))
    im.paste(RED, (0, 0, width // 2, height // 2))
    return im


def exif_orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[ORIENTATION] = value
    return exif


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        chunks.append((data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]))
        pos += 12 + length
    return chunks


def png_from_chunks(chunks: list[tuple[bytes, bytes]]) -> bytes:
    out = [b"\x89PNG\r\n\x1a\n"]
    for kind, body in chunks:
        out.append(struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body)))
    return b"".join(out)


def png_claiming(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose IHDR (CRC fixed) claims another size."""
    chunks = png_chunks(encode(Image.new("RGB", (1, 1)), "PNG"))
    kind, body = chunks[0]
    assert kind == b"IHDR"
    chunks[0] = (kind, struct.pack(">II", width, height) + body[8:])
    return png_from_chunks(chunks)


def gif_claiming(width: int, height: int) -> bytes:
    """A small GIF whose logical screen claims another size."""
    data = bytearray(encode(Image.new("P", (4, 4)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def rejected(data: bytes, **kwargs: int) -> ImageRejected:
    with pytest.raises(ImageRejected) as info:
        load_image(data, **kwargs)
    assert info.value.reason in REASONS
    return info.value


# --- accepted formats -------------------------------------------------------------------------------------


def _mpo(im: Image.Image) -> bytes:
    return encode(im, "MPO", save_all=True, append_images=[Image.new("RGB", im.size, BLUE)])


@pytest.mark.parametrize(
    ("make", "expected_format"),
    [
        (lambda im: encode(im, "JPEG", quality=95), "jpeg"),
        (_mpo, "jpeg"),
        (lambda im: encode(im, "PNG"), "png"),
        (lambda im: encode(im, "GIF"), "gif"),
        (lambda im: encode(im, "WEBP", quality=95), "webp"),
        (lambda im: encode(im, "WEBP", lossless=True), "webp"),
        (lambda im: encode(im, "BMP"), "bmp"),
        (lambda im: encode(im, "TIFF"), "tiff"),
        (lambda im: encode(im, "TIFF", compression="tiff_deflate"), "tiff"),
    ],
    ids=["jpeg", "mpo", "png", "gif", "webp", "webp-lossless", "bmp", "tiff", "tiff-deflate"],
)
def test_accepted_formats_decode_to_rgb(make, expected_format: str) -> None:
    data = make(Image.new("RGB", (120, 80), RED))
    loaded = load_image(data)
    assert loaded.format == expected_format
    assert (loaded.width, loaded.height) == (120, 80)
    assert loaded.sha256 == hashlib.sha256(data).hexdigest()
    assert loaded.bytes == len(data)
    assert loaded.image.mode == "RGB"
    assert loaded.image.size == (120, 80)
    assert close_to(loaded.image.getpixel((60, 40)), RED)


def test_returned_image_is_detached_from_the_file_and_its_metadata() -> None:
    loaded = load_image(encode(Image.new("RGB", (100, 100), RED), "JPEG", exif=exif_orientation(1)))
    assert type(loaded.image) is Image.Image
    assert not isinstance(loaded.image, ImageFile.ImageFile)
    assert loaded.image.info == {}
    loaded.image.load()  # still usable after the source file was closed


def test_loaded_image_is_frozen() -> None:
    loaded = load_image(encode(Image.new("RGB", (40, 40), RED), "PNG"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.width = 1  # type: ignore[misc]
    assert isinstance(loaded, LoadedImage)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animation_uses_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (64, 64), colour) for colour in (RED, GREEN, BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    loaded = load_image(data)
    assert loaded.format == fmt.lower()
    assert close_to(loaded.image.getpixel((32, 32)), RED)


def test_multi_page_tiff_uses_first_page() -> None:
    pages = [Image.new("RGB", (64, 64), colour) for colour in (GREEN, RED)]
    loaded = load_image(encode(pages[0], "TIFF", save_all=True, append_images=pages[1:]))
    assert close_to(loaded.image.getpixel((32, 32)), GREEN)


# --- shrinking ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
def test_large_image_shrinks_to_between_min_side_and_twice(fmt: str) -> None:
    loaded = load_image(encode(quadrant_picture(2000, 1000), fmt))
    assert (loaded.width, loaded.height) == (2000, 1000)
    assert 224 <= min(loaded.image.size) <= 448
    # The aspect ratio survives the shrink.
    assert abs(loaded.image.width / loaded.image.height - 2.0) < 0.02


def test_large_jpeg_uses_draft_and_stays_in_range(monkeypatch: pytest.MonkeyPatch) -> None:
    real_draft = JpegImagePlugin.JpegImageFile.draft
    requests = []

    def spy_draft(self, mode, size):
        requests.append(size)
        return real_draft(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy_draft)
    loaded = load_image(encode(noise(4000, 3000), "JPEG", quality=80))
    assert requests == [(224, 224)]
    assert (loaded.width, loaded.height) == (4000, 3000)
    assert 224 <= min(loaded.image.size) <= 448


def test_min_side_is_a_parameter() -> None:
    loaded = load_image(encode(quadrant_picture(2000, 1000), "PNG"), min_side=100)
    assert 100 <= min(loaded.image.size) <= 200


def test_medium_image_keeps_at_least_min_side() -> None:
    loaded = load_image(encode(quadrant_picture(300, 300), "JPEG"))
    assert min(loaded.image.size) >= 224


def test_small_image_is_not_resized() -> None:
    loaded = load_image(encode(quadrant_picture(100, 100), "PNG"))
    assert loaded.image.size == (100, 100)


def test_a_draft_that_shrinks_too_far_falls_back_to_full_decode(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def greedy_draft(self, mode, size):
        # Ask for an eighth of the size, so the scale lands below min_side.
        return real_draft(self, mode, (size[0] // 8, size[1] // 8))

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", greedy_draft)
    with caplog.at_level("DEBUG", logger="pipelines.imaging"):
        loaded = load_image(encode(quadrant_picture(2000, 1000), "JPEG"))
    assert "decoding at full size" in caplog.text
    assert 224 <= min(loaded.image.size) <= 448


# --- EXIF orientation -----------------------------------------------------------------------------------


def _oriented(fmt: str, orientation: int, size: tuple[int, int] = (400, 300)) -> bytes:
    im = quadrant_picture(*size)
    if fmt == "TIFF":
        return encode(im, "TIFF", tiffinfo={ORIENTATION: orientation})
    return encode(im, fmt, exif=exif_orientation(orientation))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "TIFF"])
def test_orientation_6_reports_portrait_and_rotates_pixels(fmt: str) -> None:
    loaded = load_image(_oriented(fmt, 6))
    assert (loaded.width, loaded.height) == (300, 400)
    assert loaded.image.size == (300, 400)
    # Orientation 6 means "rotate 90 degrees clockwise to display": stored top-left goes to top-right.
    assert close_to(loaded.image.getpixel((295, 5)), RED)
    assert close_to(loaded.image.getpixel((5, 5)), (128, 128, 128))


@pytest.mark.parametrize(("orientation", "red_corner"), [(1, (5, 5)), (3, (395, 295)), (8, (5, 395))])
def test_other_orientations(orientation: int, red_corner: tuple[int, int]) -> None:
    loaded = load_image(_oriented("JPEG", orientation))
    assert close_to(loaded.image.getpixel(red_corner), RED)


def test_orientation_after_draft_and_shrink() -> None:
    loaded = load_image(_oriented("JPEG", 6, size=(2000, 1000)))
    assert (loaded.width, loaded.height) == (1000, 2000)
    assert loaded.image.width < loaded.image.height
    assert 224 <= loaded.image.width <= 448
    assert close_to(loaded.image.getpixel((loaded.image.width - 3, 3)), RED)


def test_min_width_applies_to_the_upright_size() -> None:
    data = _oriented("JPEG", 6)  # stored 400x300, shown 300x400
    assert rejected(data, min_width=350, min_height=10).reason == TOO_SMALL
    assert load_image(data, min_width=10, min_height=350).height == 400


def test_png_exif_after_the_pixel_data_is_honoured() -> None:
    chunks = png_chunks(_oriented("PNG", 6))
    exif = [chunk for chunk in chunks if chunk[0] == b"eXIf"]
    rest = [chunk for chunk in chunks if chunk[0] not in (b"eXIf", b"IEND")]
    data = png_from_chunks(rest + exif + [(b"IEND", b"")])
    assert data.index(b"eXIf") > data.index(b"IDAT")
    loaded = load_image(data)
    assert (loaded.width, loaded.height) == (300, 400)
    assert close_to(loaded.image.getpixel((295, 5)), RED)
    assert rejected(data, min_width=350, min_height=10).reason == TOO_SMALL


# Pillow warns while reading the broken EXIF; under "-W error" that warning would make it a decode_error.
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_malformed_exif_is_ignored() -> None:
    data = encode(quadrant_picture(100, 80), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff")
    loaded = load_image(data)
    assert (loaded.width, loaded.height) == (100, 80)


# --- colour modes ---------------------------------------------------------------------------------------


def test_cmyk_jpeg_comes_out_in_plausible_colour() -> None:
    data = encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    loaded = load_image(data)
    assert loaded.image.mode == "RGB"
    assert close_to(loaded.image.getpixel((32, 32)), RED)


def test_large_cmyk_jpeg_shrinks() -> None:
    im = Image.new("CMYK", (1000, 600), (255, 0, 255, 0))  # green
    loaded = load_image(encode(im, "JPEG", quality=95))
    assert 224 <= min(loaded.image.size) <= 448
    assert close_to(loaded.image.getpixel((100, 100)), GREEN)


def test_cmyk_tiff() -> None:
    loaded = load_image(encode(Image.new("CMYK", (64, 64), (255, 255, 0, 0)), "TIFF"))
    assert close_to(loaded.image.getpixel((5, 5)), BLUE, tolerance=5)


def test_lab_tiff_neutral_grey_stays_grey() -> None:
    loaded = load_image(encode(Image.new("LAB", (64, 64), (128, 128, 128)), "TIFF"))
    r, g, b = loaded.image.getpixel((5, 5))
    assert max(r, g, b) - min(r, g, b) <= 10
    assert 60 <= r <= 200


def test_grayscale_jpeg() -> None:
    loaded = load_image(encode(Image.linear_gradient("L").resize((600, 600)), "JPEG"))
    assert loaded.image.mode == "RGB"
    assert 224 <= min(loaded.image.size) <= 448


def test_palette_png_with_transparency_composites_over_white() -> None:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (32, 0, 64, 64))
    loaded = load_image(encode(im, "PNG", transparency=0))
    assert loaded.image.getpixel((5, 5)) == WHITE
    assert loaded.image.getpixel((60, 5)) == GREEN


def test_palette_png_without_transparency() -> None:
    im = Image.new("RGB", (64, 64), BLUE).convert("P")
    loaded = load_image(encode(im, "PNG"))
    assert close_to(loaded.image.getpixel((5, 5)), BLUE, tolerance=5)


def test_gif_transparency_composites_over_white() -> None:
    im = Image.new("P", (64, 64), 0)
    im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (32, 0, 64, 64))
    loaded = load_image(encode(im, "GIF", transparency=0))
    assert loaded.image.getpixel((5, 5)) == WHITE
    assert loaded.image.getpixel((60, 5)) == RED


def test_large_palette_png_shrinks_in_colour() -> None:
    im = quadrant_picture(1000, 1000).convert("P")
    loaded = load_image(encode(im, "PNG"))
    assert 224 <= min(loaded.image.size) <= 448
    assert close_to(loaded.image.getpixel((5, 5)), RED, tolerance=5)


def test_rgba_png_composites_over_white() -> None:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (32, 0, 64, 32))
    im.paste((255, 0, 0, 128), (32, 32, 64, 64))
    loaded = load_image(encode(im, "PNG"))
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((5, 5)) == WHITE  # fully transparent black becomes white, not black
    assert loaded.image.getpixel((40, 5)) == BLUE
    assert close_to(loaded.image.getpixel((40, 40)), (255, 127, 127), tolerance=3)


def test_large_rgba_png_shrinks_and_composites() -> None:
    im = Image.new("RGBA", (1000, 1000), (0, 0, 0, 0))
    im.paste((0, 0, 255, 255), (500, 0, 1000, 1000))
    loaded = load_image(encode(im, "PNG"))
    assert 224 <= min(loaded.image.size) <= 448
    assert loaded.image.getpixel((3, 3)) == WHITE
    assert loaded.image.getpixel((loaded.image.width - 3, 3)) == BLUE


def test_la_png_composites_over_white() -> None:
    im = Image.new("LA", (64, 64), (0, 0))
    im.paste((0, 255), (32, 0, 64, 64))
    loaded = load_image(encode(im, "PNG"))
    assert loaded.image.getpixel((5, 5)) == WHITE
    assert loaded.image.getpixel((60, 5)) == (0, 0, 0)


def test_rgba_webp_composites_over_white() -> None:
    im = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    loaded = load_image(encode(im, "WEBP", lossless=True))
    assert loaded.image.getpixel((5, 5)) == WHITE


def test_rgb_png_with_colour_key_transparency() -> None:
    im = Image.new("RGB", (64, 64), (10, 20, 30))
    im.paste(RED, (32, 0, 64, 64))
    loaded = load_image(encode(im, "PNG", transparency=(10, 20, 30)))
    assert loaded.image.getpixel((5, 5)) == WHITE
    assert loaded.image.getpixel((60, 5)) == RED


def _gradient_row(loaded: LoadedImage) -> list[int]:
    return [loaded.image.getpixel((x, 10))[0] for x in range(loaded.image.width)]


def test_16bit_png_keeps_its_gradient() -> None:
    values = np.tile(np.arange(256, dtype=np.uint16) * 257, (64, 1))
    im = Image.fromarray(values)
    assert im.mode == "I;16"
    data = encode(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    row = _gradient_row(load_image(data))
    assert row[0] == 0 and row[-1] == 255
    assert 120 <= row[128] <= 136
    assert row == sorted(row)


def test_16bit_big_endian_tiff_keeps_its_gradient() -> None:
    values = np.tile(np.arange(256, dtype=np.uint16) * 257, (64, 1))
    # Built from raw bytes: Pillow's own I;16 -> I;16B conversion clips at 255.
    big_endian = Image.frombytes("I;16B", (256, 64), values.astype(">u2").tobytes())
    data = encode(big_endian, "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I;16B"
    row = _gradient_row(load_image(data))
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row)


def test_32bit_integer_tiff_keeps_its_gradient() -> None:
    values = np.tile(np.arange(256, dtype=np.int32) * 257, (64, 1))
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "I"
    row = _gradient_row(load_image(data))
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row)


def test_float_tiff_keeps_its_gradient() -> None:
    values = np.tile(np.linspace(0.0, 1.0, 256, dtype=np.float32), (64, 1))
    data = encode(Image.fromarray(values), "TIFF")
    assert Image.open(io.BytesIO(data)).mode == "F"
    row = _gradient_row(load_image(data))
    assert row[0] == 0 and row[-1] == 255 and row == sorted(row)


def test_large_16bit_png_shrinks() -> None:
    values = np.tile(np.linspace(0, 65535, 1000).astype(np.uint16), (600, 1))
    loaded = load_image(encode(Image.fromarray(values), "PNG"))
    assert 224 <= min(loaded.image.size) <= 448
    row = _gradient_row(loaded)
    assert row[0] <= 5 and row[-1] >= 250


def test_bilevel_image() -> None:
    im = Image.new("1", (64, 64), 0)
    im.paste(1, (0, 0, 32, 64))
    loaded = load_image(encode(im, "PNG"))
    assert loaded.image.mode == "RGB"
    assert loaded.image.getpixel((5, 5)) == WHITE
    assert loaded.image.getpixel((60, 5)) == (0, 0, 0)


def test_large_bilevel_tiff_shrinks() -> None:
    im = Image.new("1", (1000, 1000), 1)
    loaded = load_image(encode(im, "TIFF", compression="group4"))
    assert 224 <= min(loaded.image.size) <= 448
    assert loaded.image.getpixel((5, 5)) == WHITE


# --- size limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(16, 16), (1, 100_000), (100_000, 1), (31, 500), (500, 31)])
def test_too_small(size: tuple[int, int]) -> None:
    assert rejected(encode(Image.new("L", size), "PNG")).reason == TOO_SMALL


def test_exactly_the_minimum_is_accepted() -> None:
    assert load_image(encode(Image.new("L", (32, 32)), "PNG")).width == 32


@pytest.mark.parametrize(
    "data",
    [png_claiming(100_000, 100_000), png_claiming(8000, 8000), gif_claiming(65535, 65535), gif_claiming(8000, 8000)],
    ids=["png-100000x100000", "png-8000x8000", "gif-65535x65535", "gif-8000x8000"],
)
def test_too_many_pixels_from_the_header(data: bytes) -> None:
    # 8000x8000 is under Pillow's own limit: only our check stops it, before any pixel is decoded (decoding
    # the 1x1 body would fail as decode_error instead).
    assert rejected(data).reason == TOO_MANY_PIXELS


def test_max_pixels_is_a_parameter() -> None:
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert rejected(data, max_pixels=9_999).reason == TOO_MANY_PIXELS
    assert load_image(data, max_pixels=10_000).width == 100


def test_pillow_bomb_error_is_too_many_pixels() -> None:
    assert rejected(png_claiming(100_000, 100_000), max_pixels=10**12).reason == TOO_MANY_PIXELS


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_bomb_warning_turned_error_is_too_many_pixels() -> None:
    assert rejected(png_claiming(10_000, 10_000), max_pixels=10**12).reason == TOO_MANY_PIXELS


def test_too_large_bytes() -> None:
    data = encode(Image.new("RGB", (64, 64), RED), "PNG")
    assert rejected(data, max_bytes=len(data) - 1).reason == TOO_LARGE
    assert load_image(data, max_bytes=len(data)).bytes == len(data)


def test_too_large_is_checked_before_sniffing() -> None:
    assert rejected(b"<html>" * 100, max_bytes=10).reason == TOO_LARGE


def test_empty() -> None:
    assert rejected(b"").reason == EMPTY


# --- not images -----------------------------------------------------------------------------------------

NOT_IMAGES = {
    "html": b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>",
    "html-inline-svg": b"<html><body><svg width='10' height='10'></svg></body></html>",
    "xhtml": b'<?xml version="1.0"?>\n<!DOCTYPE html>\n<html xmlns="http://www.w3.org/1999/xhtml"></html>',
    "json": b'{"error": "not found", "status": 404}',
    "text": b"Access denied\n",
    "text-starting-BM": b"BMW press photos are available on request.",
    "zip": b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(100),
    "pdf": b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
    "gzip": b"\x1f\x8b\x08\x00" + bytes(50),
    "mp4": b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2",
    "zeros": bytes(100),
    "xml-not-svg": b'<?xml version="1.0"?><rss version="2.0"></rss>',
}


@pytest.mark.parametrize("name", sorted(NOT_IMAGES))
def test_not_image(name: str) -> None:
    data = NOT_IMAGES[name]
    assert sniff_format(data) is None
    assert rejected(data).reason == NOT_IMAGE


SVGS = {
    "bare": b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
    "prolog": b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "bom-whitespace": b'\xef\xbb\xbf \r\n\t<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "bom-prolog": b'\xef\xbb\xbf<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
    "comment-doctype": (
        b'<?xml version="1.0" encoding="utf-8"?>\n<!-- Generator: Adobe Illustrator 24.0.0 -->\n'
        b'<!DOCTYPE svg PUBLIC "-//W3C//DTD SVG 1.1//EN" "http://www.w3.org/Graphics/SVG/1.1/DTD/svg11.dtd">\n'
        b'<svg version="1.1"></svg>'
    ),
    "comment-only": b"<!-- Created with Inkscape -->\n<svg>\n</svg>",
    "upper-case": b"<SVG></SVG>",
    "namespaced": b'<svg:svg xmlns:svg="http://www.w3.org/2000/svg"></svg:svg>',
    "utf16": '\ufeff<?xml version="1.0" encoding="UTF-16"?><svg></svg>'.encode("utf-16-le"),
}


@pytest.mark.parametrize("name", sorted(SVGS))
def test_svg(name: str) -> None:
    data = SVGS[name]
    assert sniff_format(data) == "svg"
    assert rejected(data).reason == SVG


def test_truncated_avif_and_heic_are_decode_errors() -> None:
    """Only an ftyp box: recognised, handed to the decoder, refused with a reason."""
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64)
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    assert (sniff_format(avif), sniff_format(heic)) == ("avif", "heic")
    assert rejected(avif).reason == rejected(heic).reason == DECODE_ERROR


@pytest.mark.parametrize(("pillow_format", "name"), [("AVIF", "avif"), ("HEIF", "heic")])
def test_avif_and_heic_decode(pillow_format: str, name: str) -> None:
    data = encode(Image.new("RGBA", (96, 64), (200, 30, 30, 128)), pillow_format)
    assert sniff_format(data) == name
    loaded = load_image(data)
    assert (loaded.format, loaded.width, loaded.height, loaded.image.mode) == (name, 96, 64, "RGB")


def _eps() -> bytes:
    return encode(Image.new("RGB", (64, 64), RED), "EPS")


def _ico() -> bytes:
    return encode(Image.new("RGB", (64, 64), RED), "ICO")


def _psd() -> bytes:
    # Signature, version 1, six reserved bytes, 3 channels, 64x64, depth 8, RGB colour mode.
    return b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 64, 64, 8, 3) + bytes(64)


@pytest.mark.parametrize(("make", "kind"), [(_eps, "eps"), (_ico, "ico"), (_psd, "psd")])
def test_risky_or_unsupported_formats_never_reach_pillow(make, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make()

    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("Image.open must not see this")

    monkeypatch.setattr(Image, "open", no_open)
    assert sniff_format(data) == kind
    assert rejected(data).reason == UNSUPPORTED_FORMAT


def test_eps_disguised_as_nothing_known_is_not_image() -> None:
    # PostScript behind a few junk bytes is not recognised by us and must not reach Pillow's EPS opener either.
    assert rejected(b"\n\n" + _eps()).reason == NOT_IMAGE


# --- broken files ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "size"),
    [("JPEG", (300, 200)), ("JPEG", (1200, 900)), ("PNG", (300, 200)), ("GIF", (300, 200)), ("WEBP", (300, 200))],
)
def test_truncated_file_is_decode_error(fmt: str, size: tuple[int, int]) -> None:
    data = encode(noise(*size), fmt)
    assert rejected(data[: len(data) // 2]).reason == DECODE_ERROR


def test_jpeg_magic_followed_by_garbage_is_decode_error() -> None:
    assert rejected(b"\xff\xd8\xff" + b"garbage" * 20).reason == DECODE_ERROR


def test_png_with_bad_crc_is_decode_error() -> None:
    data = bytearray(encode(Image.new("RGB", (64, 64), RED), "PNG"))
    data[29] ^= 0xFF  # IHDR CRC
    assert rejected(bytes(data)).reason == DECODE_ERROR


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (OSError("broken data stream"), DECODE_ERROR),
        (SyntaxError("not a PNG file"), DECODE_ERROR),
        (ValueError("bad mode"), DECODE_ERROR),
        (struct.error("unpack requires a buffer"), DECODE_ERROR),
        (EOFError(), DECODE_ERROR),
        (MemoryError(), DECODE_ERROR),
        (ZeroDivisionError("division by zero"), DECODE_ERROR),
        (Image.DecompressionBombError("too big"), TOO_MANY_PIXELS),
    ],
)
def test_any_pillow_exception_becomes_a_reason(error: Exception, reason: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_open(*args: object, **kwargs: object) -> None:
        raise error

    monkeypatch.setattr(Image, "open", failing_open)
    exc = rejected(encode(Image.new("RGB", (64, 64)), "PNG"))
    assert exc.reason == reason
    assert type(error).__name__ in exc.detail
    assert len(exc.detail) <= 200


# --- sniffing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "kind"),
    [("JPEG", "jpeg"), ("PNG", "png"), ("GIF", "gif"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tiff")],
)
def test_sniff_format_of_real_files(fmt: str, kind: str) -> None:
    assert sniff_format(encode(Image.new("RGB", (8, 8)), fmt)) == kind


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"II+\x00\x08\x00\x00\x00", "tiff"),
        (b"\xff\x0a\xfa\x7f", "jxl"),
        (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "jxl"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "jp2"),
        (b"\x00\x00\x00\x20ftypmif1\x00\x00\x00\x00mif1avifmiafMA1B", "avif"),
        (b"", None),
        (b"\xff", None),
    ],
)
def test_sniff_format_signatures(head: bytes, kind: str | None) -> None:
    assert sniff_format(head) == kind


# --- exceptions, threads and global state ---------------------------------------------------------------


def test_reasons_are_the_snake_case_constants() -> None:
    assert set(REASONS) == {
        "empty",
        "not_image",
        "svg",
        "too_large",
        "too_many_pixels",
        "too_small",
        "decode_error",
        "unsupported_format",
    }
    assert len(REASONS) == len(set(REASONS))


def test_image_rejected_carries_reason_and_detail_and_pickles() -> None:
    exc = rejected(encode(Image.new("L", (16, 16)), "PNG"))
    assert exc.reason == TOO_SMALL
    assert "16x16" in exc.detail
    assert str(exc).startswith("too_small")
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.reason, copy.detail) == (exc.reason, exc.detail)


def test_pillow_global_settings_are_untouched() -> None:
    before = (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES)
    inputs = [
        encode(noise(1200, 900), "JPEG"),
        encode(noise(300, 200), "JPEG")[:3000],
        png_claiming(100_000, 100_000),
        png_claiming(8000, 8000),
        gif_claiming(65535, 65535),
        b"<svg></svg>",
    ]
    for data in inputs:
        try:
            load_image(data)
        except ImageRejected:
            pass
    assert (Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES) == before
    assert "MAX_IMAGE_PIXELS" not in vars(imaging)


def _outcome(data: bytes) -> tuple[str, str]:
    try:
        loaded = load_image(data)
    except ImageRejected as exc:
        return ("rejected", exc.reason)
    return (loaded.sha256, f"{loaded.image.size}{loaded.image.getpixel((3, 3))}")


def test_concurrent_calls_agree_with_sequential_ones() -> None:
    inputs = [
        encode(noise(1200, 900, seed=1), "JPEG"),
        encode(quadrant_picture(1000, 700), "PNG"),
        _oriented("JPEG", 6),
        encode(noise(300, 200), "JPEG")[:3000],
        encode(Image.new("RGBA", (500, 500), (0, 0, 0, 0)), "WEBP"),
        png_claiming(8000, 8000),
    ] * 4
    sequential = [_outcome(data) for data in inputs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        concurrent = list(pool.map(_outcome, inputs))
    assert concurrent == sequential
