"""Turn downloaded bytes into an RGB image ready for the model, or a rejection with a counted reason.

The crawl (in a worker thread) and the query side (a user's query image) both call :func:`load_image`.
Everything here is a pure function: nothing touches Pillow's module-level settings
(``Image.MAX_IMAGE_PIXELS``, ``ImageFile.LOAD_TRUNCATED_IMAGES``) or the ``warnings`` filters, so calls
from several threads at once cannot interfere.

Checks run cheapest first, and no pixel is decoded before the size from the header has been checked:
empty -> too_large (bytes) -> magic-number sniff (svg / not_image / unsupported_format) -> ``Image.open``
restricted to the accepted formats -> too_many_pixels -> too_small -> decode -> shrink -> RGB.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import logging
import re
from dataclasses import dataclass, field

import numpy as np

# Importing the plugins registers their openers now, so Image.open never has to fall back to Image.init(),
# which would import every plugin (EPS and its Ghostscript call included) from whatever thread got there first.
from PIL import (  # noqa: F401
    AvifImagePlugin,
    BmpImagePlugin,
    GifImagePlugin,
    Image,
    JpegImagePlugin,
    MpoImagePlugin,
    PngImagePlugin,
    TiffImagePlugin,
    WebPImagePlugin,
)
from pillow_heif import register_heif_opener

# HEIC/HEIF through pillow-heif's opener, registered under Pillow's format name "HEIF" (AVIF is Pillow's own).
register_heif_opener()

logger = logging.getLogger(__name__)

EMPTY = "empty"
NOT_IMAGE = "not_image"
SVG = "svg"
TOO_LARGE = "too_large"
TOO_MANY_PIXELS = "too_many_pixels"
TOO_SMALL = "too_small"
DECODE_ERROR = "decode_error"
UNSUPPORTED_FORMAT = "unsupported_format"

REASONS = (EMPTY, NOT_IMAGE, SVG, TOO_LARGE, TOO_MANY_PIXELS, TOO_SMALL, DECODE_ERROR, UNSUPPORTED_FORMAT)

# Sniffed name -> the only Pillow opener allowed to look at the bytes. A sniffed name missing here is an image
# format we recognise but refuse (svg, ico, psd, eps, jxl, jp2): it never reaches Pillow.
_PILLOW_FORMATS = {
    "jpeg": "JPEG",  # Pillow's JPEG opener also returns MPO (multi-picture JPEG from cameras)
    "png": "PNG",
    "gif": "GIF",
    "webp": "WEBP",
    "bmp": "BMP",
    "tiff": "TIFF",
    "avif": "AVIF",
    "heic": "HEIF",
}
# Pillow's format name -> ours.
_FORMAT_NAMES = {
    "JPEG": "jpeg",
    "MPO": "jpeg",
    "PNG": "png",
    "GIF": "gif",
    "WEBP": "webp",
    "BMP": "bmp",
    "TIFF": "tiff",
    "AVIF": "avif",
    "HEIF": "heic",
}

# Enough for an SVG's XML declaration, a generator comment and a DOCTYPE before the root element.
_SNIFF_BYTES = 4096
# DIB header sizes that Pillow's BMP plugin reads; checking them keeps text starting with "BM" out.
_BMP_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"msf1"})
_SVG_DOCTYPE = re.compile(r"<!doctype\s+svg[\s>\[]")
_SVG_ROOT = re.compile(r"<(?:[a-z0-9_.-]+:)?svg[\s/>]")

_ORIENTATION_TAG = 0x0112
# The same mapping as PIL.ImageOps.exif_transpose; orientations 5-8 swap width and height.
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SWAPS_SIDES = frozenset({5, 6, 7, 8})

_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_WHITE = (255, 255, 255)
_DETAIL_CHARS = 200


class ImageRejected(Exception):
    """Bytes that cannot become a model input.

    ``reason`` is one of the module's reason constants (for stats keys); ``detail`` is short human text for
    the one log line, and may quote the underlying exception.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        # Both go to Exception.__init__ so the exception survives pickling (process pools).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


@dataclass(frozen=True)
class LoadedImage:
    """A decoded image, ready for the model's processor.

    ``width``/``height`` are the original image's, after EXIF orientation; ``image`` is RGB, upright, and
    shrunk so its shortest side is at least ``min_side`` (at most about twice that when the original allows).
    """

    sha256: str
    format: str
    width: int
    height: int
    bytes: int
    # Same bytes make the same image: equality and hashing go by the fields above, not by pixels.
    image: Image.Image = field(compare=False)


def sniff_format(data: bytes) -> str | None:
    """Name the format from the first bytes, without Pillow.

    Returns "jpeg", "png", "gif", "webp", "bmp", "tiff", "svg", "avif", "heic", or one of the other image
    formats we recognise only to refuse ("ico", "psd", "eps", "jxl", "jp2"); None for anything else (HTML,
    text, JSON, ZIP, PDF, video, unknown binary).
    """
    head = bytes(data[:_SNIFF_BYTES])
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_HEADER_SIZES:
        return "bmp"
    if head[4:8] == b"ftyp":
        return _sniff_iso_bmff(head)
    # ICO and CUR; a non-zero image count keeps runs of zero bytes from matching.
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00") and head[4:6] != b"\x00\x00":
        return "ico"
    if head[:4] == b"8BPS":
        return "psd"
    if head.startswith(b"%!PS") or head[:4] == b"\xc5\xd0\xd3\xc6":
        return "eps"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL \r\n\x87\n")):
        return "jxl"
    if head.startswith((b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")):
        return "jp2"
    if _looks_like_svg(head):
        return "svg"
    return None


def load_image(
    data: bytes,
    *,
    max_bytes: int = 20 * 1024 * 1024,
    max_pixels: int = 50_000_000,
    min_width: int = 32,
    min_height: int = 32,
    min_side: int = 224,
) -> LoadedImage:
    """Decode ``data`` into an upright RGB image shrunk for the model, or raise :class:`ImageRejected`.

    ``max_pixels`` is checked against the header's size before any pixel is decoded; ``min_width`` and
    ``min_height`` apply to the original size after EXIF orientation. Only the first frame of animated or
    multi-page images is used. Safe to call from several threads at once.
    """
    if not data:
        raise ImageRejected(EMPTY, "no bytes")
    if len(data) > max_bytes:
        raise ImageRejected(TOO_LARGE, f"{len(data)} bytes, cap {max_bytes}")
    kind = sniff_format(data)
    if kind == "svg":
        raise ImageRejected(SVG, "svg markup")
    if kind is None:
        raise ImageRejected(NOT_IMAGE, f"starts with {bytes(data[:8])!r}")
    pillow_format = _PILLOW_FORMATS.get(kind)
    if pillow_format is None:
        raise ImageRejected(UNSUPPORTED_FORMAT, kind)
    try:
        return _decode(
            data,
            pillow_format,
            max_pixels=max_pixels,
            min_width=min_width,
            min_height=min_height,
            min_side=min_side,
            use_draft=True,
        )
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own limit (a warning only when the caller's filters turn warnings into errors).
        raise ImageRejected(TOO_MANY_PIXELS, _describe(exc)) from exc
    except Exception as exc:
        # Decoders fail in many ways on hostile or broken bytes (OSError for truncation, SyntaxError,
        # ValueError, struct.error, EOFError, MemoryError, ...): every one is a counted reason, never a crash.
        raise ImageRejected(DECODE_ERROR, _describe(exc)) from exc


def _decode(
    data: bytes,
    pillow_format: str,
    *,
    max_pixels: int,
    min_width: int,
    min_height: int,
    min_side: int,
    use_draft: bool,
) -> LoadedImage:
    with Image.open(io.BytesIO(data), formats=(pillow_format,)) as im:
        fmt = _FORMAT_NAMES.get(im.format or "")
        if fmt is None:
            # formats= already restricts the openers; this guards against a plugin returning another class.
            raise ImageRejected(UNSUPPORTED_FORMAT, str(im.format))
        header_width, header_height = im.size
        if header_width * header_height > max_pixels:
            raise ImageRejected(TOO_MANY_PIXELS, f"{header_width}x{header_height} over {max_pixels} pixels")
        orientation = _orientation(im, decoded=False)
        width, height = _upright_size(header_width, header_height, orientation)
        _check_min_size(width, height, min_width, min_height)

        if use_draft and fmt == "jpeg" and min_side > 0 and min(im.size) >= 2 * min_side:
            # libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the cost; Pillow picks the smallest
            # scale that keeps both sides >= the requested size.
            im.draft("RGB", (min_side, min_side))
            if min(im.size) < min_side:
                logger.debug("JPEG draft gave %s for min_side %d; decoding at full size", im.size, min_side)
                return _decode(
                    data,
                    pillow_format,
                    max_pixels=max_pixels,
                    min_width=min_width,
                    min_height=min_height,
                    min_side=min_side,
                    use_draft=False,
                )
        im.load()

        decoded_orientation = _orientation(im, decoded=True)
        if decoded_orientation != orientation:
            # A PNG's eXIf chunk may follow the pixel data, so only now is its orientation known.
            width, height = _upright_size(header_width, header_height, decoded_orientation)
            _check_min_size(width, height, min_width, min_height)
        image = _model_image(im, decoded_orientation, min_side)
    return LoadedImage(
        sha256=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        bytes=len(data),
        image=image,
    )


def _sniff_iso_bmff(head: bytes) -> str | None:
    """AVIF or HEIC from an ISO-BMFF ``ftyp`` box's major and compatible brands; None for video."""
    box_size = int.from_bytes(head[:4], "big")
    end = min(max(box_size, 16), len(head))
    brands = {head[8:12]} | {head[i : i + 4] for i in range(16, end - 3, 4)}
    if brands & _AVIF_BRANDS:
        return "avif"
    if brands & _HEIF_BRANDS:
        return "heic"
    return None


def _looks_like_svg(head: bytes) -> bool:
    """Whether the text's first element (after BOM, whitespace, XML declaration, comments) is <svg>."""
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text = head.decode("utf-16", errors="ignore")
    else:
        text = head.decode("utf-8", errors="ignore")
    text = text.lstrip("\ufeff \t\r\n\f\v").lower()
    while text.startswith(("<?", "<!--")):
        close = "?>" if text.startswith("<?") else "-->"
        end = text.find(close)
        if end < 0:
            return False
        text = text[end + len(close) :].lstrip()
    if text.startswith("<!doctype"):
        return _SVG_DOCTYPE.match(text) is not None
    # HTML with an inline <svg> starts with <html> or <!doctype html>, so it does not match here.
    return _SVG_ROOT.match(text) is not None


def _orientation(im: Image.Image, *, decoded: bool) -> int:
    """The EXIF orientation (1-8), 1 when absent, malformed or out of range."""
    if not decoded and isinstance(im, PngImagePlugin.PngImageFile) and "exif" not in im.info:
        # PngImageFile.getexif() decodes every pixel to look for an eXIf chunk after the image data.
        return 1
    try:
        value = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as exc:
        # Broken EXIF should not cost a good picture; it is only metadata.
        logger.debug("Ignoring unreadable EXIF: %s", _describe(exc))
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in _SWAPS_SIDES else (width, height)


def _check_min_size(width: int, height: int, min_width: int, min_height: int) -> None:
    if width < min_width or height < min_height:
        raise ImageRejected(TOO_SMALL, f"{width}x{height} under {min_width}x{min_height}")


def _model_image(im: Image.Image, orientation: int, min_side: int) -> Image.Image:
    """Shrink, turn upright and flatten a decoded frame into a standalone RGB image."""
    work = _reducible(im)
    if min_side > 0:
        # An integer factor of shortest // min_side keeps the shortest side >= min_side and < 2 * min_side.
        factor = min(work.size) // min_side
        if factor >= 2:
            work = work.reduce(factor)
    method = _TRANSPOSE.get(orientation)
    if method is not None:
        work = work.transpose(method)
    if work.mode in ("LA", "RGBA"):
        flat = Image.new("RGB", work.size, _WHITE)
        # Transparent areas are usually meant to show a light page behind them; black would invent a frame.
        flat.paste(work, mask=work)
        work = flat
    elif work.mode != "RGB":
        work = work.convert("RGB")
    elif work is im:
        # The opened image keeps the whole body alive through its file object, and closes with it.
        work = im.copy()
    # The pixels are upright now: leftover EXIF would let a later exif_transpose rotate them twice.
    work.info = {}
    return work


def _reducible(im: Image.Image) -> Image.Image:
    """The frame as L, LA, RGB or RGBA: the modes that Image.reduce averages correctly."""
    mode = im.mode
    if mode in _HIGH_DEPTH_MODES:
        return _to_8bit_gray(im)
    if _has_transparency(im):
        if mode in ("LA", "RGBA"):
            return im
        if mode == "La":
            return im.convert("LA")
        # Palette indices cannot be averaged, and a tRNS colour key only survives as an alpha channel.
        return im.convert("RGBA")
    if mode in ("L", "RGB"):
        return im
    if mode == "1":
        # Averaging bilevel pixels as L gives grey edges instead of dropped lines.
        return im.convert("L")
    # P, CMYK (inverted Adobe CMYK and YCCK are already undone by the JPEG decoder), YCbCr, LAB, HSV, RGBX.
    return im.convert("RGB")


def _has_transparency(im: Image.Image) -> bool:
    # Image.has_transparency_data only exists from Pillow 10.1; this is the same test.
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        return True
    return im.mode == "P" and im.palette is not None and im.palette.mode.endswith("A")


def _to_8bit_gray(im: Image.Image) -> Image.Image:
    """Scale 16-bit, 32-bit integer or float grey to 8 bits (Pillow's own conversion clips at 255)."""
    values = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray((values >> 8).astype(np.uint8))
    values = np.nan_to_num(values.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(values.min()), float(values.max())
    # The value range is not recorded anywhere, so guess it from the data: unit floats, 8-bit, 16-bit,
    # else stretch whatever range there is.
    if im.mode == "F" and low >= 0.0 and high <= 1.0:
        values = values * 255.0
    elif low >= 0.0 and high <= 255.0:
        pass
    elif low >= 0.0 and high <= 65535.0:
        values = values / 257.0
    elif high > low:
        values = (values - low) * (255.0 / (high - low))
    else:
        values = np.zeros_like(values)
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]
