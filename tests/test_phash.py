"""Tests for pipelines.phash: perceptual hashes of images generated in memory (photo-like, text-like, UI-like).

The rate tests print what they measured (``pytest -s`` shows it); they assert rates, not every image.
"""

from __future__ import annotations

import functools
import io
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from pipelines.imaging import load_image
from pipelines.phash import (
    ANCHORS,
    CROP_NAMES,
    CROP_SCALES,
    HASH_BITS,
    MATCH_BITS,
    MIN_CROP_SIDE,
    WHOLE,
    PerceptualHash,
    crop_boxes,
    from_bit_vector,
    from_hex,
    hamming,
    hamming_from_score,
    image_hashes,
    query_hash,
    to_bit_vector,
    to_es_bits,
    to_hex,
)

SIZE = (448, 336)


def colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def photo_like(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """Smooth colour waves, a few filled shapes, sensor-like noise, a slight blur."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.empty((h, w, 3))
    for c in range(3):
        fx, fy, speed = rng.uniform(-1, 1, 3)
        base[..., c] = 128 + 90 * np.sin(2 * np.pi * (fx * x + fy * y) * (1 + 2 * abs(speed)) + rng.uniform(0, 6.3))
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(4, 10))):
        cx, cy, r = int(rng.integers(0, w)), int(rng.integers(0, h)), int(rng.integers(15, max(w, h) // 3))
        if rng.random() < 0.5:
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour(rng))
        else:
            draw.rectangle((cx - r, cy - r // 2, cx + r, cy + r // 2), fill=colour(rng))
    noisy = np.asarray(im, dtype=np.float64) + rng.normal(0, 12, (h, w, 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(1))


def text_like(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A page of fake text: lines of dark word-sized rectangles on a light background, ragged ends, paragraphs."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, colour(rng, 220, 256))
    draw = ImageDraw.Draw(im)
    ink = colour(rng, 0, 80)
    margin, line = int(rng.integers(10, 40)), int(rng.integers(10, 18))
    y = int(rng.integers(8, 30))
    while y < h - line:
        x = margin
        end = w - margin - (int(rng.integers(0, w // 2)) if rng.random() < 0.3 else 0)
        while x < end:
            word = int(rng.integers(12, 60))
            draw.rectangle((x, y, min(x + word, end), y + line - 4), fill=ink)
            x += word + int(rng.integers(5, 10))
        y += line + int(rng.integers(4, 9)) + (int(rng.integers(10, 30)) if rng.random() < 0.15 else 0)
    return im


def ui_like(seed: int, size: tuple[int, int] = SIZE) -> Image.Image:
    """A screenshot-like drawing: flat header and sidebar, bordered panels with short text bars."""
    rng = np.random.default_rng(seed)
    w, h = size
    im = Image.new("RGB", size, colour(rng))
    draw = ImageDraw.Draw(im)
    top, side = int(rng.integers(20, 60)), int(rng.integers(60, 160))
    draw.rectangle((0, 0, w, top), fill=colour(rng))
    draw.rectangle((0, top, side, h) if rng.random() < 0.5 else (w - side, top, w, h), fill=colour(rng))
    for _ in range(int(rng.integers(3, 8))):
        x0, y0 = int(rng.integers(0, w - 40)), int(rng.integers(top, h - 30))
        x1, y1 = x0 + int(rng.integers(40, 200)), y0 + int(rng.integers(25, 120))
        draw.rectangle((x0, y0, x1, y1), fill=colour(rng), outline=colour(rng), width=int(rng.integers(1, 4)))
        for k in range(int(rng.integers(0, 4))):
            draw.rectangle((x0 + 6, y0 + 6 + 10 * k, x0 + 6 + int(rng.integers(10, 80)), y0 + 12 + 10 * k),
                           fill=colour(rng))
    return im


@functools.cache
def pictures() -> tuple[Image.Image, ...]:
    """21 different pictures, 7 of each kind."""
    return tuple(make(seed) for seed in range(7) for make in (photo_like, text_like, ui_like))


@functools.cache
def stored() -> tuple[tuple[PerceptualHash, ...], ...]:
    return tuple(tuple(image_hashes(im)) for im in pictures())


def pictures_and_hashes() -> zip:
    return zip(pictures(), stored(), strict=True)


def jpeg(im: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def corner_crop(im: Image.Image, cut: float, corner: str) -> Image.Image:
    """Cut ``cut`` of the width and of the height away, keeping ``corner``; then shrink to 70 % and save as JPEG."""
    w, h = im.size
    cw, ch = round(w * (1 - cut)), round(h * (1 - cut))
    x = 0 if corner.endswith("left") else w - cw
    y = 0 if corner.startswith("top") else h - ch
    cropped = im.crop((x, y, x + cw, y + ch))
    return jpeg(cropped.resize((round(cw * 0.7), round(ch * 0.7)), Image.Resampling.LANCZOS), 75)


def random_crop(im: Image.Image, keep: float, rng: np.random.Generator) -> Image.Image:
    """Keep ``keep`` of each side at a random place; then shrink to 70 % and save as JPEG."""
    w, h = im.size
    cw, ch = round(w * keep), round(h * keep)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    cropped = im.crop((x, y, x + cw, y + ch))
    return jpeg(cropped.resize((round(cw * 0.7), round(ch * 0.7)), Image.Resampling.LANCZOS), 75)


def best_distance(query: Image.Image, hashes: tuple[PerceptualHash, ...]) -> int:
    q = query_hash(query).bits
    return min(hamming(q, h.bits) for h in hashes)


def test_normal_image_has_twenty_hashes_whole_first():
    im = pictures()[0]
    hashes = image_hashes(im)
    assert len(CROP_NAMES) == 1 + len(CROP_SCALES) * len(ANCHORS) + 4 == 20
    assert [h.crop for h in hashes] == list(CROP_NAMES)
    assert hashes[0].crop == WHOLE
    assert {"90_top_left", "80_center", "90_top", "90_right"} <= set(CROP_NAMES)
    assert all(0 <= h.bits < 1 << HASH_BITS for h in hashes)
    assert len({h.bits for h in hashes}) > 1
    assert query_hash(im) == hashes[0]


def test_hashes_are_deterministic():
    im = pictures()[1]
    assert image_hashes(im) == image_hashes(im.copy()) == list(stored()[1])
    with pytest.raises(AttributeError):
        image_hashes(im)[0].bits = 0


@pytest.mark.parametrize(("size", "count"), [((40, 40), 1), ((MIN_CROP_SIDE - 1, 300), 1), ((MIN_CROP_SIDE, 300), 20)])
def test_small_images_keep_the_whole_hash_only(size, count):
    im = pictures()[3].resize(size, Image.Resampling.LANCZOS)
    hashes = image_hashes(im)
    assert len(hashes) == count
    assert hashes[0] == query_hash(im)


def test_same_bits_as_imagehash():
    import imagehash  # a dev dependency: the reference these hashes must equal (the crops' nearly)
    distances = []
    for im in pictures()[:6]:
        hashes = image_hashes(im)
        assert hashes[0].hex == str(imagehash.phash(im))
        distances += [hamming(h.bits, from_hex(str(imagehash.phash(im.crop(box)))))
                      for h, box in zip(hashes[1:], crop_boxes(*im.size), strict=True)]
    # The crops are hashed from a shrunk copy: a bit or two away from imagehash's, far below MATCH_BITS.
    assert np.mean(distances) <= 2 and np.mean(np.array(distances) <= 4) >= 0.9, distances


def test_crop_boxes():
    boxes = dict(zip(CROP_NAMES[1:], crop_boxes(448, 336), strict=True))
    assert boxes["95_top_left"] == (0, 0, 426, 319)
    assert boxes["90_bottom_right"] == (448 - 403, 336 - 302, 448, 336)
    assert boxes["80_top_right"] == (448 - 358, 0, 448, 269)
    assert boxes["80_bottom_left"] == (0, 336 - 269, 358, 336)
    assert boxes["80_center"] == (45, 33, 45 + 358, 33 + 269)
    assert boxes["90_top"] == (22, 0, 22 + 403, 302)
    assert boxes["90_bottom"] == (22, 336 - 302, 22 + 403, 336)
    assert boxes["90_left"] == (0, 17, 403, 17 + 302)
    assert boxes["90_right"] == (448 - 403, 17, 448, 17 + 302)


def test_edited_copies_keep_their_whole_hash():
    edits = {
        "resize_50": lambda im: im.resize((im.width // 2, im.height // 2), Image.Resampling.LANCZOS),
        "jpeg_q30": lambda im: jpeg(im, 30),
        "grayscale": lambda im: im.convert("L").convert("RGB"),
    }
    for name, edit in edits.items():
        distances = [hamming(query_hash(edit(im)).bits, hashes[0].bits) for im, hashes in pictures_and_hashes()]
        print(f"{name}: whole hash within {MATCH_BITS} bits for {np.mean(np.array(distances) <= MATCH_BITS):.2f}, "
              f"max {max(distances)} bits")
        assert max(distances) <= MATCH_BITS, (name, distances)


@pytest.mark.parametrize("cut", [0.05, 0.10])
def test_corner_crops_match_a_stored_crop(cut):
    corners = ("top_left", "top_right", "bottom_left", "bottom_right")
    best, whole = [], []
    for i, (im, hashes) in enumerate(pictures_and_hashes()):
        copy = corner_crop(im, cut, corners[i % 4])
        best.append(best_distance(copy, hashes))
        whole.append(best_distance(copy, hashes[:1]))
    recall, whole_recall = np.mean(np.array(best) <= MATCH_BITS), np.mean(np.array(whole) <= MATCH_BITS)
    print(f"{cut:.0%} corner crop, 70 %, JPEG q75: recall {recall:.2f} with all the hashes, {whole_recall:.2f} "
          f"with the whole hash only; distances {sorted(best)}")
    assert recall >= 0.9
    if cut >= 0.10:
        # The reason for storing crops: the whole-image hash alone misses most of these.
        assert whole_recall <= 0.5


def test_random_crops_mostly_match_a_stored_crop():
    rng = np.random.default_rng(7)
    best = [best_distance(random_crop(im, 0.90, rng), hashes) for im, hashes in pictures_and_hashes() for _ in "ab"]
    recall = np.mean(np.array(best) <= MATCH_BITS)
    print(f"random 90 % crop (2 per picture), 70 %, JPEG q75: recall {recall:.2f}; distances {sorted(best)}")
    # Not a stored crop: the offset lands between the anchors (at most 2.5 % of a side from one), the hardest case.
    assert recall >= 0.9


def test_different_pictures_rarely_match():
    all_hashes = stored()
    pairs = matches = 0
    closest = HASH_BITS
    for j, query in enumerate(all_hashes):
        for i, hashes in enumerate(all_hashes):
            if i == j:
                continue
            distance = min(hamming(query[0].bits, h.bits) for h in hashes)
            closest = min(closest, distance)
            pairs += 1
            matches += distance <= MATCH_BITS
    print(f"false matches: {matches}/{pairs} = {matches / pairs:.3f}; closest different pair {closest} bits")
    assert matches / pairs <= 0.02


def test_shrunk_image_hashes_like_the_original():
    """load_image shrinks big images before hashing; pHash's 32x32 grid barely notices."""
    for make in (photo_like, text_like, ui_like):
        big = make(11, (1344, 1008))
        original = image_hashes(big)
        for fmt in ("PNG", "JPEG"):
            buf = io.BytesIO()
            big.save(buf, fmt, quality=90)
            loaded = load_image(buf.getvalue()).image
            assert min(loaded.size) < 450
            distances = [hamming(a.bits, b.bits) for a, b in zip(original, image_hashes(loaded), strict=True)]
            print(f"{make.__name__} {fmt} 1344x1008 -> {loaded.size}: whole {distances[0]}, max {max(distances)}, "
                  f"mean {np.mean(distances):.2f} bits")
            assert distances[0] <= 4
            assert max(distances) <= 6


def test_hashing_from_threads_gives_the_same_hashes():
    ims = pictures()[:6]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results = list(pool.map(image_hashes, ims))
    assert [tuple(r) for r in results] == list(stored()[:6])


def test_hex_round_trip():
    assert to_hex(0) == "0" * 16
    assert to_hex((1 << 64) - 1) == "f" * 16
    assert to_hex(0xABCDEF) == "0000000000abcdef"
    for h in stored()[0]:
        assert len(h.hex) == 16 and h.hex == h.hex.lower()
        assert from_hex(h.hex) == h.bits
        assert from_hex(h.hex.upper()) == h.bits
    for bad in ("abc", "0x" + "0" * 14, " " + "0" * 15, "g" * 16):
        with pytest.raises(ValueError):
            from_hex(bad)
    with pytest.raises(ValueError):
        to_hex(1 << 64)
    with pytest.raises(ValueError):
        to_hex(-1)


def test_bit_vector_forms():
    # Elasticsearch's documented example: bytes [-127, 0, 1, 42, 127] are the hex string "8100012a7f".
    bits = 0x8100012A7F000080
    assert to_bit_vector(bits) == [-127, 0, 1, 42, 127, 0, 0, -128]
    assert to_es_bits(bits) == "8100012a7f000080"
    assert from_bit_vector(to_bit_vector(bits)) == bits
    assert from_bit_vector([129, 0, 1, 42, 127, 0, 0, 128]) == bits
    for h in stored()[2]:
        vector = to_bit_vector(h.bits)
        assert len(vector) == HASH_BITS // 8 and all(-128 <= v <= 127 for v in vector)
        assert from_bit_vector(vector) == h.bits
        assert to_es_bits(h.bits) == h.hex
    with pytest.raises(ValueError):
        from_bit_vector([0] * 7)
    with pytest.raises(ValueError):
        from_bit_vector([0] * 7 + [256])


def test_hamming():
    a = stored()[0][0].bits
    assert hamming(a, a) == 0
    assert hamming(0, (1 << 64) - 1) == 64
    assert hamming(0b1011, 0b0001) == 2
    assert hamming(a, a ^ (1 << 63)) == 1
    b = stored()[1][0].bits
    assert hamming(a, b) == hamming(b, a) == bin(a ^ b).count("1")
    with pytest.raises(ValueError):
        hamming(-1, 0)


def test_hamming_from_score_reads_the_distance_of_a_real_near_duplicate_hit(es, index_alias):
    from index_setup.indices import ensure_indices
    from query.builders import near_query

    ensure_indices(es, index_alias, dims=8, model="test-model")
    stored = 0x0123_4567_89AB_CDEF
    es.index(index=index_alias, id="one", refresh=True, document={
        "phash": to_hex(stored), "phash_crops": [{"crop": WHOLE, "hash": to_es_bits(stored)}]})
    for distance in (0, 1, 5, 12, 31, 64):
        query = stored ^ ((1 << distance) - 1)  # the lowest `distance` bits flipped
        hits = es.search(index=index_alias, knn=near_query(to_hex(query), k=1, max_bits=HASH_BITS),
                         source=False)["hits"]["hits"]
        assert [hit["_id"] for hit in hits] == ["one"]
        assert hamming_from_score(hits[0]["_score"]) == distance == hamming(stored, query)
