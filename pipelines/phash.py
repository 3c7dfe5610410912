"""64-bit DCT perceptual hashes (pHash) for the near-duplicate channel: catch resized, recompressed, grey or cropped
copies of an image.

At download time an image gets 20 hashes (:func:`image_hashes`): the whole image, then 15 crops of it (95 %, 90 %
and 80 % of each side, anchored at the four corners and at the centre), then 4 more 90 % crops anchored at the
middles of the four edges. Those four are there for crops taken anywhere: a 90 % crop at a random position lies
up to 5 % of a side away from the nearest of the first five 90 % anchors, which a 64-bit pHash does not survive
about one time in ten, and at most 2.5 % away once the edge middles are anchors too (bench/copies.py: random 90 %
crops found within 10 bits 0.91 -> 0.98 of the time, for 25 % more hashing). A query image is hashed once, whole
(:func:`query_hash`), and matches an indexed image when it is within a few bits (``MATCH_BITS``, Hamming distance)
of any of that image's hashes: a crop of the original looks like one of the stored crops. Images whose shortest
side is under ``MIN_CROP_SIDE`` keep the whole-image hash only.

The whole-image hash is ``imagehash.phash`` (hash_size 8, highfreq_factor 4) bit for bit: grey -> 32x32 Lanczos
-> 2-D DCT-II -> the 8x8 lowest frequencies compared with their median, row by row, the first bit the most
significant (so :func:`to_hex` equals ``str(imagehash.phash(image))``). The crops' hashes are the same recipe on a
copy of the image first shrunk (Lanczos too) to a shortest side of ``CROP_SOURCE_SIDE``, each crop then brought
to 32x32 by the same Lanczos filter written as two small matrices (:func:`_crop_grids`): all 19 crops in two
batched matrix products instead of 19 resize calls (long strips, over ``MATRIX_MAX_SIDE``, keep the resize
calls). That saves about 1 ms per image (2.5 instead of 3.5 ms around 320x240, the fetch stage's usual size),
finds the same edited copies (bench/copies.py), and moves a crop's hash by about 0.1 bit on average from what
the resize calls gave (at most 2 bits; more on flat drawings, whose DCT coefficients tie). The grey conversion
runs once per image, and the 20 DCTs run as one batch.

Elasticsearch (8.15+) stores a hash as a ``dense_vector`` with ``element_type: "bit"``, ``dims: 64``, given either
as 16 hex digits (:func:`to_es_bits`) or as 8 signed bytes (:func:`to_bit_vector`), first bits first. Its only
similarity for bit vectors, ``l2_norm``, is the Hamming distance: a kNN ``similarity`` of ``MATCH_BITS`` keeps
hashes at most that many bits away, and the ``_score`` is ``(64 - hamming) / 64`` (:func:`hamming_from_score`).

pHash compares 64 DCT coefficients with their median, so a hash has 32 bits set unless coefficients tie (flat
images: a blank image hashes to ``8000000000000000`` or ``0000000000000000``), and distances between ordinary
hashes are even.

Everything here is a pure function of its arguments, safe to call from several threads at once.
"""

from __future__ import annotations

import functools
import string
from dataclasses import dataclass

import numpy as np
import scipy.fftpack
from PIL import Image

CROP_SCALES = (0.95, 0.90, 0.80)
ANCHORS = ("top_left", "top_right", "bottom_left", "bottom_right", "center")
WHOLE = "whole"
# The middles of the edges, for the 90 % crops only (see above: the 95 % crops are at most 2.5 % off already, and
# an 80 % crop of a copy is rarer than the cost of four more hashes).
EDGE_ANCHORS = ("top", "bottom", "left", "right")
EDGE_SCALE = 0.90
CROP_NAMES = (WHOLE, *(f"{round(scale * 100)}_{anchor}" for scale in CROP_SCALES for anchor in ANCHORS),
              *(f"{round(EDGE_SCALE * 100)}_{anchor}" for anchor in EDGE_ANCHORS))
HASH_BITS = 64
# The hash's input grid (hash_size 8 x highfreq_factor 4, as imagehash.phash).
HASH_INPUT_SIDE = 32
# Below this shortest side only the whole image is hashed. Such images are icons, logos, avatars and thumbnails,
# many per page, where 19 more nested vectors each cost index size and, on flat drawings (whose DCT coefficients
# tie), chances of false matches, for copies that are rarely cropped. From 64 px up the smallest crop (80 %) is
# still >= 51 px, so every crop is shrunk onto the 32x32 grid, never enlarged.
MIN_CROP_SIDE = 64
# Crop hashes are shrunk from a copy of the image whose shortest side is this (4x the hash's grid).
CROP_SOURCE_SIDE = 4 * HASH_INPUT_SIDE
# Sources up to this long are resampled by matrix products; longer strips by Pillow, crop by crop.
MATRIX_MAX_SIDE = 1024
# Weights kept for this many image sizes (at most 2.4 MB each, for the longest sources; 0.4 MB for a photo's).
CROP_WEIGHTS_KEPT = 16
# Hamming distance at or below which two hashes are the same picture (measured: edited and cropped copies within
# 10 bits, different pictures almost never).
MATCH_BITS = 10

_HASH_SIDE = 8
_BYTES = HASH_BITS // 8
_MAX_BITS = (1 << HASH_BITS) - 1


@dataclass(frozen=True)
class PerceptualHash:
    """One 64-bit pHash: ``crop`` names the part of the image hashed ("whole" or e.g. "90_top_left")."""

    crop: str
    bits: int

    @property
    def hex(self) -> str:
        return to_hex(self.bits)


def image_hashes(image: Image.Image) -> list[PerceptualHash]:
    """The 20 hashes of an image: the whole image first, then the crops in ``CROP_NAMES`` order.

    An image whose shortest side is under ``MIN_CROP_SIDE`` gets the whole-image hash only. ``image`` is any
    Pillow image (RGB from ``pipelines.imaging.load_image``); it is converted to grey once, as imagehash does
    for each hash.
    """
    grey = image.convert("L")
    grids = [_hash_input(grey)]
    if min(grey.size) >= MIN_CROP_SIDE:
        # The crops are shrunk from a copy reduced once (Lanczos, as the hash's own step) to a shortest side of
        # CROP_SOURCE_SIDE, not each from the full image: Lanczos costs in proportion to the pixels it
        # reads, and 19 passes over the full image were most of the hashing time. The whole-image hash, which
        # queries compute and which users may compare with imagehash's, stays exact.
        shrink = CROP_SOURCE_SIDE / min(grey.size)
        source = grey
        if shrink < 0.8:
            source = grey.resize((max(1, round(grey.width * shrink)), max(1, round(grey.height * shrink))),
                                 Image.Resampling.LANCZOS)
        grids.extend(_crop_grids(source, *grey.size))
    bits = _phash_bits(np.stack(grids))
    return [PerceptualHash(name, b) for name, b in zip(CROP_NAMES[:len(bits)], bits, strict=True)]


def document_fields(hashes: list[PerceptualHash]) -> dict[str, object]:
    """The image document's near-duplicate fields: the whole image's hash as hex, every hash as a bit vector."""
    return {"phash": hashes[0].hex,
            "phash_crops": [{"crop": h.crop, "hash": to_es_bits(h.bits)} for h in hashes]}


def query_hash(image: Image.Image) -> PerceptualHash:
    """The whole-image hash of a query image: what the stored hashes, crops included, are compared with."""
    grey = image.convert("L")
    return PerceptualHash(WHOLE, _phash_bits(_hash_input(grey)[np.newaxis])[0])


def crop_boxes(width: int, height: int) -> list[tuple[int, int, int, int]]:
    """The 19 crop boxes (left, top, right, bottom) of a ``width`` x ``height`` image, in ``CROP_NAMES`` order."""
    boxes = []
    for scale, anchors in [*((scale, ANCHORS) for scale in CROP_SCALES), (EDGE_SCALE, EDGE_ANCHORS)]:
        w, h = round(width * scale), round(height * scale)
        middle_x, middle_y = (width - w) // 2, (height - h) // 2
        origins = {
            "top_left": (0, 0),
            "top_right": (width - w, 0),
            "bottom_left": (0, height - h),
            "bottom_right": (width - w, height - h),
            "center": (middle_x, middle_y),
            "top": (middle_x, 0),
            "bottom": (middle_x, height - h),
            "left": (0, middle_y),
            "right": (width - w, middle_y),
        }
        boxes.extend((x, y, x + w, y + h) for x, y in (origins[anchor] for anchor in anchors))
    return boxes


def hamming(a: int, b: int) -> int:
    """The number of bits in which two hashes differ (0..64)."""
    return (_checked(a) ^ _checked(b)).bit_count()


def to_hex(bits: int) -> str:
    """16 lower-case hex digits, most significant first: the keyword form, and ``str(imagehash.phash(...))``."""
    return f"{_checked(bits):016x}"


def from_hex(text: str) -> int:
    """The inverse of :func:`to_hex` (upper case is accepted)."""
    if len(text) != 2 * _BYTES or not all(c in string.hexdigits for c in text):
        raise ValueError(f"a {HASH_BITS}-bit hash is {2 * _BYTES} hex digits, got {text!r}")
    return int(text, 16)


def to_es_bits(bits: int) -> str:
    """The value of a ``dense_vector`` field with ``element_type: "bit"``, ``dims: 64``, as a hex string.

    Elasticsearch (8.15+) reads a bit vector either as a hex string or as an array of ``dims / 8`` signed bytes
    (:func:`to_bit_vector`); both mean the same bits, the first hex digit / byte holding the first dimensions.
    The hex string is accepted when indexing and as a kNN ``query_vector``, and is shorter in JSON.
    """
    return to_hex(bits)


def to_bit_vector(bits: int) -> list[int]:
    """The same bits as 8 signed bytes (-128..127), most significant byte first: the array form of a bit vector."""
    return [b - 256 if b > 127 else b for b in _checked(bits).to_bytes(_BYTES, "big")]


def from_bit_vector(values: list[int]) -> int:
    """The inverse of :func:`to_bit_vector` (unsigned bytes 0..255 are accepted too)."""
    if len(values) != _BYTES:
        raise ValueError(f"a {HASH_BITS}-bit hash is {_BYTES} bytes, got {len(values)}")
    if any(not -128 <= v <= 255 for v in values):
        raise ValueError(f"bytes must be in -128..255, got {values}")
    return int.from_bytes(bytes(v & 0xFF for v in values), "big")


def hamming_from_score(score: float) -> int:
    """The Hamming distance behind an Elasticsearch kNN ``_score`` on a bit vector: ``score = (64 - d) / 64``."""
    return round(HASH_BITS * (1.0 - score))


def _hash_input(grey: Image.Image) -> np.ndarray:
    return np.asarray(grey.resize((HASH_INPUT_SIDE, HASH_INPUT_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)


def _crop_grids(source: Image.Image, width: int, height: int) -> np.ndarray:
    """The 32x32 grids of the crops of a ``width`` x ``height`` image, taken from ``source``, a copy of it."""
    if max(source.size) > MATRIX_MAX_SIDE:
        # A long strip: dense weights over its length would take far more memory than Pillow's own resize.
        return np.stack([np.asarray(source.resize((HASH_INPUT_SIDE, HASH_INPUT_SIDE), Image.Resampling.LANCZOS,
                                                  box=box), dtype=np.float64)
                         for box in _source_boxes(source.width, source.height, width, height)])
    rows, columns = _crop_weights(source.width, source.height, width, height)
    # Rows first: each distinct vertical range once (the anchors share them), then each crop's columns.
    shrunk_rows = rows[0] @ np.asarray(source, dtype=np.float32)
    return np.matmul(shrunk_rows[rows[1]], columns[0][columns[1]].transpose(0, 2, 1)).astype(np.float64)


@functools.lru_cache(maxsize=CROP_WEIGHTS_KEPT)
def _crop_weights(source_width: int, source_height: int, width: int,
                  height: int) -> tuple[tuple[np.ndarray, list[int]], tuple[np.ndarray, list[int]]]:
    """For the crops of a ``width`` x ``height`` image taken from a ``source_width`` x ``source_height`` copy:
    the Lanczos weights of each distinct vertical range and which one each crop uses, then the same for the
    horizontal ranges. Kept per size: the images of a site often share a few sizes, and building the weights
    costs more than using them."""
    boxes = _source_boxes(source_width, source_height, width, height)
    vertical = sorted({(top, bottom) for _, top, _, bottom in boxes})
    horizontal = sorted({(left, right) for left, _, right, _ in boxes})
    rows = _lanczos_weights(source_height, vertical)
    columns = _lanczos_weights(source_width, horizontal)
    rows.flags.writeable = columns.flags.writeable = False  # shared between threads
    return ((rows, [vertical.index((top, bottom)) for _, top, _, bottom in boxes]),
            (columns, [horizontal.index((left, right)) for left, _, right, _ in boxes]))


def _source_boxes(source_width: int, source_height: int, width: int,
                  height: int) -> list[tuple[float, float, float, float]]:
    """The crop boxes of a ``width`` x ``height`` image, in the coordinates of a ``source_width`` x
    ``source_height`` copy of it."""
    scale_x, scale_y = source_width / width, source_height / height
    return [(left * scale_x, top * scale_y, right * scale_x, bottom * scale_y)
            for left, top, right, bottom in crop_boxes(width, height)]


def _lanczos_weights(size: int, ranges: list[tuple[float, float]]) -> np.ndarray:
    """(len(ranges), HASH_INPUT_SIDE, size) float32 matrices, each taking a line of ``size`` pixels to
    HASH_INPUT_SIDE samples of its [start, end) as Pillow's Lanczos resize weighs them: sample i centred at
    start + (i + 0.5) * scale, the filter stretched by the scale when shrinking, taps cut at the line's ends,
    each row summing to 1. Only the taps inside each sample's window are computed."""
    starts, ends = np.array(ranges, dtype=np.float64).T
    scale = (ends - starts) / HASH_INPUT_SIDE
    stretch = np.maximum(scale, 1.0)
    support = 3.0 * stretch
    centres = starts[:, np.newaxis] + (np.arange(HASH_INPUT_SIDE) + 0.5) * scale[:, np.newaxis]
    first = np.maximum(np.trunc(centres - support[:, np.newaxis] + 0.5), 0).astype(np.int64)
    stop = np.minimum(np.trunc(centres + support[:, np.newaxis] + 0.5), size).astype(np.int64)
    positions = first[..., np.newaxis] + np.arange(2 * int(np.ceil(support.max())) + 1)
    offsets = (positions - centres[..., np.newaxis] + 0.5) / stretch[:, np.newaxis, np.newaxis]
    taps = np.where(np.abs(offsets) < 3.0, np.sinc(offsets) * np.sinc(offsets / 3.0), 0.0)
    inside = positions < stop[..., np.newaxis]
    taps[~inside] = 0.0
    totals = taps.sum(axis=-1, keepdims=True)
    taps /= np.where(totals == 0.0, 1.0, totals)
    weights = np.zeros((len(ranges), HASH_INPUT_SIDE, size), dtype=np.float32)
    which, sample, tap = np.nonzero(inside)
    weights[which, sample, positions[which, sample, tap]] = taps[which, sample, tap]
    return weights


def _phash_bits(grids: np.ndarray) -> list[int]:
    """imagehash.phash's DCT and median step for a stack of 32x32 grey grids (same calls, so the same bits)."""
    dct = scipy.fftpack.dct(scipy.fftpack.dct(grids, axis=1), axis=2)
    low = dct[:, :_HASH_SIDE, :_HASH_SIDE].reshape(len(grids), _HASH_SIDE * _HASH_SIDE)
    above = low > np.median(low, axis=1, keepdims=True)
    return [int.from_bytes(row.tobytes(), "big") for row in np.packbits(above, axis=1)]


def _checked(bits: int) -> int:
    if not 0 <= bits <= _MAX_BITS:
        raise ValueError(f"a {HASH_BITS}-bit hash is 0..2**{HASH_BITS}-1, got {bits}")
    return bits
