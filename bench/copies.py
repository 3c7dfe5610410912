"""Source finding for edited copies: single-hash vs multi-crop perceptual hashes. Prints figures, not a test.

    python bench/copies.py [--images 500] [--seed 7] [--near-bits 10] [--keep]

Generates N distinct images of five kinds, deterministically from --seed: photo-like pictures (``photo_like`` from
the sample site, and painted landscapes; many sizes and aspect ratios, JPEG q88), text documents, box-and-arrow
diagrams, charts (bar, line, scatter, pie) and screenshot-like UI drawings (windows, toolbars, sidebars, forms,
buttons, tables; mostly flat colours) -- the last four as PNG. They are indexed through the product's own
functions (``imaging.load_image`` -> ``phash.image_hashes`` / ``document_fields`` -> ``Embedder.embed_images`` ->
``indexing.image_actions`` / ``source_action`` -> ``send_actions``) into two scratch indices created by
``ensure_indices`` with the same mapping:

  multi-crop   the product's documents: 20 hashes per image (the whole image and 19 crops);
  single-hash  the same documents, but ``phash_crops`` holds only the whole-image hash.

Each image then gets six edited copies, each re-encoded as JPEG (q85 unless said otherwise): resized to 50 %,
JPEG q30 (same size), grayscale, cropped by 5 % and by 10 % of each side from one corner (the corner cycles with
the image), and a 90 % x 90 % crop at a random (seeded) position. Every copy is queried with
``Searcher.search_image(bytes, k=5, index=...)`` against both indices, one after the other, and the table gives,
per edit kind: the share of copies whose source is ranked first (any channel), the share whose source is returned
labelled ``near``, the false ``near`` labels (a near result that is not the source), and -- computed here, without
Elasticsearch -- the share whose query hash is within --near-bits of a stored hash of the source, so that what the
hashes allow and what the search returned can be told apart. Then the same by image kind, the false near labels in
detail, how many unedited originals already lie within --near-bits of another original, and a threshold sweep
computed from the hashes alone (source found / another image within N bits, for N = 4..12), and the timings:
``image_hashes`` per image (20 hashes) against the whole-image hash alone, and ``search_image`` wall time.

With the stand-in models (random weights: used when the configured CLIP cannot be loaded, or with --standin) the
semantic channel says nothing about CLIP (a random network still maps a copy close to its source, so it sometimes
ranks the source first where the near channel missed it); the near channel does not depend on the model. The
scratch indices (bench-copies-<random>-multi / -single, with their -sources and -urls indices) are deleted at the
end, also on Ctrl-C, SIGTERM or an error, unless --keep.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import platform
import signal
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Nothing here may reach a model hub; set before anything imports huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter, ImageFont  # noqa: E402

from bench.machine import cpu_model  # noqa: E402

KINDS = ("photo", "document", "diagram", "chart", "ui")
EDITS = ("resize_50", "jpeg_q30", "grayscale", "crop_5", "crop_10", "crop_90_random")
EDIT_LABELS = {"resize_50": "resize 50 %", "jpeg_q30": "JPEG q30", "grayscale": "grayscale",
               "crop_5": "crop 5 % corner", "crop_10": "crop 10 % corner", "crop_90_random": "random 90 % crop"}
# The targets for the multi-crop near channel.
TARGETS = {"resize_50": 0.98, "jpeg_q30": 0.98, "grayscale": 0.98, "crop_5": 0.95, "crop_10": 0.95,
           "crop_90_random": 0.95}
CORNERS = ("top_left", "top_right", "bottom_left", "bottom_right")
COPY_QUALITY = 85
PHOTO_QUALITY = 88
K = 5
BATCH = 32
SITE = "https://bench-copies.example"


# -- generated images -------------------------------------------------------------------------------------------
_FONTS: dict[int, Any] = {}
_SYLLABLES = ("ka", "lo", "mi", "ne", "ra", "tu", "sen", "dor", "vi", "pla", "ex", "ion", "ter", "ma", "qui", "ber",
              "sta", "no", "el", "in", "ot", "ur", "za", "fe", "con", "pro", "da", "ti", "go", "li")
_PASTELS = ((255, 223, 186), (186, 225, 255), (204, 255, 204), (255, 204, 229), (229, 204, 255), (255, 255, 186),
            (220, 220, 220), (190, 240, 230))
_STRONG = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def font(size: int) -> Any:
    """Pillow's bundled font at `size` px (the same glyphs on every machine with the same Pillow)."""
    size = max(8, int(size))
    if size not in _FONTS:
        try:
            _FONTS[size] = ImageFont.load_default(size=size)
        except TypeError:  # Pillow < 10.1: one bitmap size only
            _FONTS[size] = ImageFont.load_default()
    return _FONTS[size]


def words(rng: np.random.Generator, count: int) -> list[str]:
    out = []
    for _ in range(count):
        word = "".join(rng.choice(_SYLLABLES, int(rng.integers(1, 4))))
        out.append(word.capitalize() if rng.random() < 0.1 else word)
    return out


def colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, 3))


def sized(rng: np.random.Generator, long_side: tuple[int, int], aspects: tuple[float, ...]) -> tuple[int, int]:
    """(width, height) with the long side in `long_side` and an aspect ratio (width / height) from `aspects`."""
    side = int(rng.integers(*long_side))
    aspect = float(rng.choice(aspects))
    return (side, max(48, round(side / aspect))) if aspect >= 1 else (max(48, round(side * aspect)), side)


def arrow(draw: ImageDraw.ImageDraw, start: tuple[float, float], end: tuple[float, float], fill: Any,
          width: int) -> None:
    draw.line([start, end], fill=fill, width=width)
    angle = math.atan2(end[1] - start[1], end[0] - start[0])
    size = 4 + 3 * width
    left = (end[0] - size * math.cos(angle - 0.4), end[1] - size * math.sin(angle - 0.4))
    right = (end[0] - size * math.cos(angle + 0.4), end[1] - size * math.sin(angle + 0.4))
    draw.polygon([end, left, right], fill=fill)


def text_lines(draw: ImageDraw.ImageDraw, rng: np.random.Generator, box: tuple[int, int, int, int], size: int,
               fill: Any, *, lines: int | None = None, spacing: float = 1.45) -> int:
    """Wrapped lines of random words inside `box`; returns the y below the last line."""
    left, top, right, bottom = box
    typeface = font(size)
    y = top
    count = 0
    while y + size <= bottom and (lines is None or count < lines):
        line = ""
        limit = right - left if rng.random() > 0.2 else (right - left) * rng.uniform(0.3, 0.9)
        for word in words(rng, 30):
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=typeface) > limit:
                break
            line = candidate
        draw.text((left, y), line, font=typeface, fill=fill)
        y += round(size * spacing)
        count += 1
    return y


def photo(rng: np.random.Generator) -> Image.Image:
    from crawler.sample_site import photo_like

    width, height = sized(rng, (320, 1601), (4 / 3, 3 / 2, 16 / 9, 1.0, 3 / 4, 2 / 3, 9 / 16, 2.4))
    if rng.random() < 0.5:
        return photo_like(int(rng.integers(0, 2**31)), width, height)
    return landscape(rng, width, height)


def landscape(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A painted outdoor scene: sky gradient, sun, clouds, layered hills, trees, blur and grain."""
    top, horizon = np.array(colour(rng, 20, 200), float), np.array(colour(rng, 120, 256), float)
    t = np.linspace(0, 1, height)[:, None, None]
    sky = (top * (1 - t) + horizon * t) * np.ones((1, width, 1))
    image = Image.fromarray(np.clip(sky, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    r = int(min(width, height) * rng.uniform(0.04, 0.12))
    cx, cy = int(rng.integers(r, width - r)), int(rng.integers(r, max(r + 1, height // 2)))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour(rng, 200, 256))
    for _ in range(int(rng.integers(0, 6))):
        x, y = int(rng.integers(0, width)), int(rng.integers(0, height // 2))
        w, h = int(width * rng.uniform(0.1, 0.3)), int(height * rng.uniform(0.03, 0.1))
        draw.ellipse([x, y, x + w, y + h], fill=(245, 245, 250))
    level = height * rng.uniform(0.35, 0.6)
    for layer in range(int(rng.integers(2, 5))):
        xs = np.linspace(0, width, int(rng.integers(4, 12)))
        ys = level + layer * height * 0.08 + rng.normal(0, height * 0.06, len(xs))
        ground = colour(rng, 10, 160)
        draw.polygon([(0, height), *zip(xs.tolist(), ys.tolist(), strict=True), (width, height)], fill=ground)
        for _ in range(int(rng.integers(0, 8))):
            x = float(rng.uniform(0, width))
            y = float(np.interp(x, xs, ys)) + height * rng.uniform(0.0, 0.1)
            h = height * rng.uniform(0.04, 0.15)
            draw.polygon([(x, y - h), (x - h / 3, y), (x + h / 3, y)], fill=colour(rng, 0, 90))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.5))))
    grain = rng.normal(0, rng.uniform(2, 9), (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float32) + grain, 0, 255).astype(np.uint8), "RGB")


def document(rng: np.random.Generator) -> Image.Image:
    """A page or an excerpt of text: title, paragraphs, bullet lists, code blocks, rules, a figure placeholder."""
    width, height = sized(rng, (420, 1300), (0.707, 0.75, 1.3, 1.8, 2.5, 3.5))
    paper = (255, 255, 255) if rng.random() < 0.6 else colour(rng, 236, 256)
    image = Image.new("RGB", (width, height), paper)
    draw = ImageDraw.Draw(image)
    ink = (0, 0, 0) if rng.random() < 0.5 else colour(rng, 0, 80)
    accent = _STRONG[int(rng.integers(len(_STRONG)))]
    margin = int(width * rng.uniform(0.04, 0.12))
    body = int(np.clip(width / rng.uniform(45, 80), 10, 22))
    right, bottom = width - margin, height - margin
    y = margin
    if rng.random() < 0.8:
        y = text_lines(draw, rng, (margin, y, right, bottom), int(body * rng.uniform(1.5, 2.4)),
                       accent if rng.random() < 0.4 else ink, lines=1) + body // 2
    while y + body < bottom:
        block = rng.choice(["para", "para", "para", "bullets", "code", "heading", "rule", "figure"])
        if block == "para":
            y = text_lines(draw, rng, (margin, y, right, bottom), body, ink, lines=int(rng.integers(2, 8)))
        elif block == "bullets":
            for _ in range(int(rng.integers(2, 6))):
                if y + body > bottom:
                    break
                draw.ellipse([margin + 4, y + body // 3, margin + 4 + body // 3, y + 2 * body // 3], fill=ink)
                y = text_lines(draw, rng, (margin + body * 2, y, right, bottom), body, ink, lines=1)
        elif block == "code":
            lines = int(rng.integers(2, 7))
            h = min(bottom - y, int(lines * body * 1.4 + body))
            draw.rectangle([margin, y, right, y + h], fill=colour(rng, 225, 248), outline=(200, 200, 200))
            for n in range(lines):
                indent = margin + body + int(rng.integers(0, 4)) * body
                text_lines(draw, rng, (indent, y + body // 2 + int(n * body * 1.4), right - body, y + h), body - 1,
                           colour(rng, 0, 140), lines=1)
            y += h
        elif block == "heading":
            y = text_lines(draw, rng, (margin, y, right, bottom), int(body * 1.35), accent, lines=1)
        elif block == "rule":
            draw.line([margin, y + body // 2, right, y + body // 2], fill=(190, 190, 190), width=1)
        else:
            h = min(bottom - y, int((right - margin) * rng.uniform(0.2, 0.5)))
            x0 = margin + int((right - margin) * rng.uniform(0, 0.3))
            draw.rectangle([x0, y, right - (x0 - margin), y + h], fill=colour(rng, 150, 240), outline=ink)
            y += h
        y += int(body * rng.uniform(0.5, 1.2))
    return image


def diagram(rng: np.random.Generator) -> Image.Image:
    """Boxes (rectangles, rounded boxes, diamonds, ellipses) with labels, joined by arrows on a light background."""
    width, height = sized(rng, (400, 1300), (4 / 3, 16 / 9, 1.0, 3 / 2, 3 / 4, 2.2))
    image = Image.new("RGB", (width, height), (255, 255, 255) if rng.random() < 0.7 else colour(rng, 235, 256))
    draw = ImageDraw.Draw(image)
    cols, rows = int(rng.integers(2, 6)), int(rng.integers(2, 5))
    cell_w, cell_h = width / cols, height / rows
    cells = rng.permutation(cols * rows)[: int(rng.integers(3, min(10, cols * rows) + 1))]
    line = colour(rng, 0, 120)
    size = int(np.clip(min(cell_w, cell_h) / 6, 9, 20))
    boxes = []
    for cell in cells:
        cx, cy = (cell % cols + 0.5) * cell_w, (cell // cols + 0.5) * cell_h
        w, h = cell_w * rng.uniform(0.45, 0.75), cell_h * rng.uniform(0.3, 0.55)
        box = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
        fill = _PASTELS[int(rng.integers(len(_PASTELS)))] if rng.random() < 0.8 else (255, 255, 255)
        shape = rng.choice(["rect", "round", "round", "diamond", "ellipse"])
        if shape == "rect":
            draw.rectangle(box, fill=fill, outline=line, width=2)
        elif shape == "round":
            draw.rounded_rectangle(box, radius=min(w, h) / 5, fill=fill, outline=line, width=2)
        elif shape == "diamond":
            draw.polygon([(cx, box[1]), (box[2], cy), (cx, box[3]), (box[0], cy)], fill=fill, outline=line)
        else:
            draw.ellipse(box, fill=fill, outline=line, width=2)
        label = " ".join(words(rng, int(rng.integers(1, 3))))
        text_w = draw.textlength(label, font=font(size))
        draw.text((cx - text_w / 2, cy - size / 2), label, font=font(size), fill=(20, 20, 20))
        boxes.append((cx, cy, w, h))
    pairs = [(i, i + 1) for i in range(len(boxes) - 1)]
    pairs += [tuple(rng.choice(len(boxes), 2, replace=False)) for _ in range(int(rng.integers(0, 3)))]
    for a, b in pairs:
        (ax, ay, aw, ah), (bx, by, bw, bh) = boxes[a], boxes[b]
        dx, dy = bx - ax, by - ay
        scale_a = 0.5 / max(abs(dx) / aw, abs(dy) / ah, 1e-9)
        scale_b = 0.5 / max(abs(dx) / bw, abs(dy) / bh, 1e-9)
        arrow(draw, (ax + dx * scale_a, ay + dy * scale_a), (bx - dx * scale_b, by - dy * scale_b), line,
              int(rng.integers(1, 4)))
    if rng.random() < 0.5:
        text_lines(draw, rng, (10, 6, width - 10, 6 + size * 2), int(size * 1.3), line, lines=1)
    return image


def chart(rng: np.random.Generator) -> Image.Image:
    """A bar, line, scatter or pie chart with title, axes, grid, tick labels and legend."""
    width, height = sized(rng, (400, 1100), (4 / 3, 16 / 9, 3 / 2, 1.0, 2.0))
    image = Image.new("RGB", (width, height), (255, 255, 255) if rng.random() < 0.8 else colour(rng, 240, 256))
    draw = ImageDraw.Draw(image)
    size = int(np.clip(width / 50, 9, 16))
    text_lines(draw, rng, (width // 10, 8, width - 10, 8 + size * 3), int(size * 1.4), (30, 30, 30), lines=1)
    palette = [_STRONG[i] for i in rng.permutation(len(_STRONG))]
    kind = rng.choice(["bar", "line", "scatter", "pie"])
    series = int(rng.integers(1, 4))
    left, top, right, bottom = int(width * 0.12), int(height * 0.15), int(width * 0.95), int(height * 0.85)
    if kind == "pie":
        parts = rng.dirichlet(np.ones(int(rng.integers(3, 8))))
        r = min(right - left, bottom - top) * 0.45
        cx, cy = left + r + 10, (top + bottom) / 2
        start = float(rng.uniform(0, 360))
        for n, part in enumerate(parts):
            end = start + 360 * float(part)
            draw.pieslice([cx - r, cy - r, cx + r, cy + r], start, end, fill=palette[n % len(palette)],
                          outline=(255, 255, 255))
            start = end
        series = len(parts)
    else:
        for n in range(6):
            y = bottom - (bottom - top) * n / 5
            draw.line([left, y, right, y], fill=(225, 225, 225))
            draw.text((left - size * 3, y - size / 2), str(int(n * rng.integers(5, 50))), font=font(size),
                      fill=(90, 90, 90))
        draw.line([left, top, left, bottom], fill=(60, 60, 60), width=2)
        draw.line([left, bottom, right, bottom], fill=(60, 60, 60), width=2)
        points = int(rng.integers(4, 16)) if kind != "scatter" else int(rng.integers(15, 80))
        for s in range(series):
            values = np.clip(np.cumsum(rng.normal(0, 0.15, points)) + rng.uniform(0.3, 0.7), 0.02, 0.98)
            if kind == "bar":
                slot = (right - left) / points
                bar = slot * 0.8 / series
                for n, v in enumerate(values):
                    x0 = left + n * slot + slot * 0.1 + s * bar
                    draw.rectangle([x0, bottom - v * (bottom - top), x0 + bar - 1, bottom - 1], fill=palette[s])
            else:
                xs = np.sort(rng.uniform(left, right, points)) if kind == "scatter" else np.linspace(left, right,
                                                                                                    points)
                ys = bottom - values * (bottom - top)
                if kind == "line":
                    draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=palette[s],
                              width=int(rng.integers(2, 4)))
                dot = int(rng.integers(2, 5))
                for x, y in zip(xs.tolist(), ys.tolist(), strict=True):
                    draw.ellipse([x - dot, y - dot, x + dot, y + dot], fill=palette[s])
        for n in range(min(points, 8)):
            draw.text((left + (right - left) * n / min(points, 8), bottom + 4), words(rng, 1)[0][:5],
                      font=font(size - 1), fill=(90, 90, 90))
    lx, ly = int(width * rng.uniform(0.6, 0.8)), top
    for s in range(min(series, 7)):
        draw.rectangle([lx, ly + s * size * 1.5, lx + size, ly + s * size * 1.5 + size], fill=palette[s])
        draw.text((lx + size * 1.5, ly + s * size * 1.5), words(rng, 1)[0], font=font(size), fill=(50, 50, 50))
    return image


def ui(rng: np.random.Generator) -> Image.Image:
    """A screenshot-like window: title bar, toolbar, sidebar list, form, buttons, text, table, status bar."""
    screens = ((1280, 800), (1366, 768), (1024, 768), (1440, 900), (800, 600), (1920, 1080), (640, 480),
               (480, 360), (390, 844), (414, 896), (560, 420))
    width, height = screens[int(rng.integers(len(screens)))]
    scale = float(rng.uniform(0.7, 1.0)) if width > 1000 else 1.0
    width, height = int(width * scale), int(height * scale)
    dark = rng.random() < 0.25
    desk = colour(rng, 40, 200)
    panel = (40, 42, 48) if dark else (colour(rng, 235, 256) if rng.random() < 0.5 else (255, 255, 255))
    fg = (220, 220, 220) if dark else (30, 30, 30)
    accent = _STRONG[int(rng.integers(len(_STRONG)))]
    image = Image.new("RGB", (width, height), desk)
    draw = ImageDraw.Draw(image)
    inset = 0 if rng.random() < 0.5 else int(min(width, height) * rng.uniform(0.02, 0.08))
    left, top, right, bottom = inset, inset, width - inset, height - inset
    draw.rectangle([left, top, right, bottom], fill=panel)
    size = int(np.clip(height / 60, 9, 16))
    bar = int(size * rng.uniform(1.8, 2.6))
    draw.rectangle([left, top, right, top + bar], fill=colour(rng, 180, 240) if not dark else (60, 62, 70))
    for n, dot in enumerate(((255, 95, 86), (255, 189, 46), (39, 201, 63))):
        draw.ellipse([left + 10 + n * bar * 0.7, top + bar * 0.3, left + 10 + n * bar * 0.7 + bar * 0.4,
                      top + bar * 0.7], fill=dot)
    text_lines(draw, rng, (left + width // 3, top + bar // 4, right - 10, top + bar), size, fg, lines=1)
    y = top + bar
    if rng.random() < 0.8:
        tool = int(size * 2.4)
        draw.rectangle([left, y, right, y + tool], fill=colour(rng, 215, 250) if not dark else (52, 54, 60))
        x = left + 8
        for _ in range(int(rng.integers(3, 12))):
            draw.rounded_rectangle([x, y + 5, x + tool - 10, y + tool - 5], radius=3,
                                   fill=colour(rng, 60, 230) if rng.random() < 0.5 else accent)
            x += tool
        if rng.random() < 0.6 and right - x > 200:
            draw.rounded_rectangle([right - 220, y + 6, right - 10, y + tool - 6], radius=8, fill=(255, 255, 255),
                                   outline=(170, 170, 170))
        y += tool
    content_left = left
    if rng.random() < 0.7 and width > 500:
        side = int((right - left) * rng.uniform(0.15, 0.3))
        draw.rectangle([left, y, left + side, bottom], fill=colour(rng, 220, 245) if not dark else (32, 33, 38))
        row = int(size * 2)
        selected = int(rng.integers(0, 8))
        for n in range(int((bottom - y) / row)):
            if n == selected:
                draw.rectangle([left, y + n * row, left + side, y + (n + 1) * row], fill=accent)
            text_lines(draw, rng, (left + 12, y + n * row + size // 2, left + side - 8, y + (n + 1) * row), size,
                       (255, 255, 255) if n == selected else fg, lines=1)
        content_left = left + side
    pad = int(size * 1.5)
    x0, x1 = content_left + pad, right - pad
    y += pad
    status = int(size * 1.8) if rng.random() < 0.6 else 0
    limit = bottom - status - pad
    if status:
        draw.rectangle([left, bottom - status, right, bottom], fill=accent if rng.random() < 0.4 else desk)
    y = text_lines(draw, rng, (x0, y, x1, limit), int(size * 1.6), fg, lines=1)
    while y + size * 3 < limit:
        block = rng.choice(["text", "form", "buttons", "table", "cards"])
        if block == "text":
            y = text_lines(draw, rng, (x0, y, x1, limit), size, fg, lines=int(rng.integers(1, 5)))
        elif block == "form":
            for _ in range(int(rng.integers(1, 4))):
                if y + size * 3 > limit:
                    break
                text_lines(draw, rng, (x0, y, x0 + (x1 - x0) // 3, y + size * 2), size, fg, lines=1)
                draw.rounded_rectangle([x0 + (x1 - x0) // 3, y - 3, x1, y + size * 2 - 3], radius=4,
                                       fill=(255, 255, 255) if not dark else (25, 25, 30), outline=(160, 160, 160))
                y += int(size * 2.6)
        elif block == "buttons":
            x = x0
            for n in range(int(rng.integers(1, 4))):
                label = words(rng, 1)[0]
                w = int(draw.textlength(label, font=font(size))) + 2 * size
                if x + w > x1:
                    break
                fill = accent if n == 0 else (colour(rng, 200, 240) if not dark else (70, 72, 80))
                draw.rounded_rectangle([x, y, x + w, y + size * 2], radius=size // 2, fill=fill)
                draw.text((x + size, y + size // 2), label, font=font(size),
                          fill=(255, 255, 255) if n == 0 else fg)
                x += w + size
            y += size * 3
        elif block == "table":
            cols = int(rng.integers(2, 6))
            row = int(size * 1.9)
            for n in range(int(rng.integers(2, 9))):
                if y + row > limit:
                    break
                if n == 0 or n % 2 == 0:
                    draw.rectangle([x0, y, x1, y + row], fill=accent if n == 0 else (
                        colour(rng, 238, 250) if not dark else (50, 52, 58)))
                for c in range(cols):
                    cx = x0 + (x1 - x0) * c / cols + 6
                    text_lines(draw, rng, (int(cx), y + size // 3, int(cx + (x1 - x0) / cols - 10), y + row), size,
                               (255, 255, 255) if n == 0 else fg, lines=1)
                y += row
        else:
            cards = int(rng.integers(2, 5))
            w = (x1 - x0 - (cards - 1) * pad) / cards
            h = min(limit - y, int(size * rng.uniform(5, 10)))
            for c in range(cards):
                cx = x0 + c * (w + pad)
                draw.rounded_rectangle([cx, y, cx + w, y + h], radius=6, fill=colour(rng, 210, 256) if not dark
                                       else (55, 57, 64), outline=(200, 200, 200) if not dark else None)
                draw.rectangle([cx, y, cx + w, y + h * 0.4], fill=colour(rng, 80, 230))
                text_lines(draw, rng, (int(cx + 8), int(y + h * 0.45), int(cx + w - 8), y + h), size, fg, lines=2)
            y += h
        y += pad
    return image


GENERATORS = {"photo": photo, "document": document, "diagram": diagram, "chart": chart, "ui": ui}


@dataclass
class Source:
    number: int
    kind: str
    data: bytes
    image_id: str = ""
    width: int = 0
    height: int = 0
    hashes: list[int] = field(default_factory=list)


def generate(count: int, seed: int) -> list[Source]:
    """`count` distinct images, kinds in turn; photos as JPEG q88, the rest as PNG (as screenshots are)."""
    import hashlib

    sources: list[Source] = []
    seen: set[str] = set()
    attempt = 0
    while len(sources) < count:
        number = len(sources)
        kind = KINDS[number % len(KINDS)]
        rng = np.random.default_rng([seed, number, attempt])
        image = GENERATORS[kind](rng)
        out = io.BytesIO()
        if kind == "photo":
            image.save(out, format="JPEG", quality=PHOTO_QUALITY)
        else:
            image.save(out, format="PNG", optimize=False)
        data = out.getvalue()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            attempt += 1  # the same bytes twice: draw this one again
            continue
        seen.add(digest)
        attempt = 0
        sources.append(Source(number, kind, data))
    return sources


# -- edited copies ----------------------------------------------------------------------------------------------
def jpeg(image: Image.Image, quality: int = COPY_QUALITY) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def corner_crop(image: Image.Image, keep: float, corner: str) -> Image.Image:
    w, h = round(image.width * keep), round(image.height * keep)
    x = 0 if corner.endswith("left") else image.width - w
    y = 0 if corner.startswith("top") else image.height - h
    return image.crop((x, y, x + w, y + h))


def edited_copy(image: Image.Image, edit: str, number: int, rng: np.random.Generator) -> bytes:
    """The copy of an RGB image for one edit kind, as JPEG bytes."""
    if edit == "resize_50":
        return jpeg(image.resize((max(1, image.width // 2), max(1, image.height // 2)), Image.Resampling.BICUBIC))
    if edit == "jpeg_q30":
        return jpeg(image, 30)
    if edit == "grayscale":
        return jpeg(image.convert("L"))
    if edit == "crop_5":
        return jpeg(corner_crop(image, 0.95, CORNERS[number % 4]))
    if edit == "crop_10":
        return jpeg(corner_crop(image, 0.90, CORNERS[(number + 1) % 4]))
    if edit == "crop_90_random":
        w, h = round(image.width * 0.9), round(image.height * 0.9)
        x, y = int(rng.integers(0, image.width - w + 1)), int(rng.integers(0, image.height - h + 1))
        return jpeg(image.crop((x, y, x + w, y + h)))
    raise ValueError(edit)


# -- indexing ---------------------------------------------------------------------------------------------------
@dataclass
class Timings:
    decode_ms: list[float] = field(default_factory=list)
    hash16_ms: list[float] = field(default_factory=list)
    hash1_ms: list[float] = field(default_factory=list)
    embed_s: float = 0.0
    write_s: float = 0.0


def index_sources(settings: Any, embedder: Any, sources: list[Source], multi: str, single: str,
                  timings: Timings) -> Counter:
    """Decode, hash, embed and bulk-write every source into both indices; returns outcome counts."""
    from index_setup.client import async_es_client
    from pipelines import imaging, phash
    from pipelines.fetch import relative_path_for
    from pipelines.indexing import image_actions, send_actions, source_action, utc_now

    limits = {"max_bytes": settings.getint("IMGSEARCH_FETCH_MAX_BYTES"),
              "max_pixels": settings.getint("IMGSEARCH_FETCH_MAX_PIXELS"),
              "min_width": settings.getint("IMGSEARCH_FETCH_MIN_WIDTH"),
              "min_height": settings.getint("IMGSEARCH_FETCH_MIN_HEIGHT")}

    def batches():
        for start in range(0, len(sources), BATCH):
            part = sources[start:start + BATCH]
            loaded = []
            for source in part:
                started = time.perf_counter()
                one = imaging.load_image(source.data, **limits)  # as the fetch stage does
                timings.decode_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                hashes = phash.image_hashes(one.image)
                timings.hash16_ms.append((time.perf_counter() - started) * 1000)
                started = time.perf_counter()
                phash.query_hash(one.image)  # what hashing costs with the whole image only
                timings.hash1_ms.append((time.perf_counter() - started) * 1000)
                source.image_id, source.width, source.height = one.sha256, one.width, one.height
                source.hashes = [h.bits for h in hashes]
                loaded.append((source, one, hashes))
            started = time.perf_counter()
            vectors = embedder.embed_images([one.image for _, one, _ in loaded])
            timings.embed_s += time.perf_counter() - started
            now = utc_now()
            actions = []
            for alias, keep in ((multi, None), (single, 1)):
                items = []
                for (source, one, hashes), vector in zip(loaded, vectors, strict=True):
                    ext = "jpg" if one.format == "jpeg" else one.format
                    items.append({
                        "image_id": one.sha256, "image_embedding": vector.tolist(),
                        "image_name": f"{source.kind}-{source.number:05d}.{ext}",
                        "relative_path": relative_path_for(one.sha256, one.format),
                        "image_url": f"{SITE}/{source.kind}/{source.number:05d}.{ext}",
                        "page_url": f"{SITE}/pages/{source.number // 10:03d}.html",
                        "page_title": f"Page {source.number // 10}", "alt_text": source.kind,
                        "width": one.width, "height": one.height, "format": one.format, "bytes": one.bytes,
                        "model": embedder.image_model_name, **phash.document_fields(hashes[:keep]),
                    })
                actions += list(image_actions(alias, items, {}, now).values())
                actions += [source_action(f"{alias}-sources", item, now) for item in items]
            yield actions

    async def write() -> Counter:
        client = async_es_client(settings)
        outcomes: Counter = Counter()
        try:
            for actions in batches():
                started = time.perf_counter()
                for outcome in await send_actions(client, actions, max_retries=3, backoff=0.5):
                    outcomes["ok" if outcome.ok else outcome.reason or "failed"] += 1
                timings.write_s += time.perf_counter() - started
        finally:
            await client.close()
        return outcomes

    return asyncio.run(write())


# -- measuring --------------------------------------------------------------------------------------------------
@dataclass
class Record:
    kind: str
    edit: str
    index: str  # "single" / "multi"
    top1: bool
    top1_match: str | None
    near: bool  # the source is in the results, labelled near
    found: bool  # the source is in the results at all
    false_near: int
    near_results: int
    exact_results: int
    within: bool  # computed here: the query hash is within near-bits of a stored hash of the source
    number: int  # the source's
    query_bits: int  # the copy's whole-image hash, as the query computes it
    distance: int  # that smallest distance
    matched_crop: str | None
    ms: float
    false_examples: list[tuple[str, int | None, str | None]] = field(default_factory=list)


def popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(values)
    return np.unpackbits(values.view(np.uint8).reshape(*values.shape, 8), axis=-1).sum(axis=-1)


def stored_matrix(sources: list[Source]) -> np.ndarray:
    """(images, hashes per image) stored hashes; an image with fewer (too small to crop) repeats its whole hash."""
    width = max(len(s.hashes) for s in sources)
    return np.array([s.hashes + [s.hashes[0]] * (width - len(s.hashes)) for s in sources], dtype=np.uint64)


def min_distances(queries: np.ndarray, stored: np.ndarray, chunk: int = 64) -> np.ndarray:
    """(queries, images): the smallest Hamming distance from each query hash to each image's stored hashes."""
    out = np.empty((len(queries), len(stored)), dtype=np.int16)
    for start in range(0, len(queries), chunk):
        part = queries[start:start + chunk]
        out[start:start + chunk] = popcount(part[:, None, None] ^ stored[None, :, :]).min(axis=2)
    return out


def collisions(sources: list[Source], near_bits: int) -> tuple[int, Counter]:
    """How many originals, queried unedited, would find another original within `near_bits`: against the other
    images' whole hashes (a count), and against any of their stored hashes (by kind)."""
    every = stored_matrix(sources)
    d_whole = min_distances(every[:, 0], every[:, :1])
    d_any = min_distances(every[:, 0], every)
    np.fill_diagonal(d_whole, 99)
    np.fill_diagonal(d_any, 99)
    return (int((d_whole.min(axis=1) <= near_bits).sum()),
            Counter(s.kind for s, d in zip(sources, d_any.min(axis=1), strict=True) if d <= near_bits))


def print_sweep(records: list[Record], sources: list[Source], near_bits: int) -> None:
    """Found / false shares at other thresholds, from the hashes alone (no Elasticsearch, no k limit)."""
    every = stored_matrix(sources)
    thresholds = sorted({4, 6, 8, 10, 12, near_bits})
    found: dict[tuple[str, str, int], float] = {}
    false: dict[tuple[str, str, int], float] = {}
    for edit in EDITS:
        mine = sorted((r for r in records if r.index == "multi" and r.edit == edit), key=lambda r: r.number)
        if not mine:
            continue
        rows = np.arange(len(mine))
        own = np.array([r.number for r in mine])
        queries = np.array([r.query_bits for r in mine], dtype=np.uint64)
        for index, stored in (("single", every[:, :1]), ("multi", every)):
            d = min_distances(queries, stored).astype(np.int32)
            source = d[rows, own].copy()
            d[rows, own] = 99
            nearest_other = d.min(axis=1)
            for bits in thresholds:
                found[index, edit, bits] = float((source <= bits).mean())
                false[index, edit, bits] = float((nearest_other <= bits).mean())
    print("\nThreshold sweep, from the hashes alone (no k limit): source within N bits / another image within N "
          "bits, share of copies")
    print(f"{'N':>3} " + " ".join(f"{EDIT_LABELS[e]:>17}" for e in EDITS) + f" {'all, single':>13} {'all, multi':>13}")
    for bits in thresholds:
        cells = [f"{found['multi', e, bits]:.3f}/{false['multi', e, bits]:.3f}" for e in EDITS]
        totals = [f"{np.mean([found[i, e, bits] for e in EDITS]):.3f}/{np.mean([false[i, e, bits] for e in EDITS]):.3f}"
                  for i in ("single", "multi")]
        print(f"{bits:>3} " + " ".join(f"{c:>17}" for c in cells) + " " + " ".join(f"{c:>13}" for c in totals))
    print("  (per edit: multi-crop; the last two columns: all edits, single-hash and multi-crop)")


def query_copies(searcher: Any, sources: list[Source], multi: str, single: str, seed: int, near_bits: int,
                 by_id: dict[str, Source]) -> tuple[list[Record], list[float]]:
    from pipelines import imaging, phash

    records: list[Record] = []
    qhash_ms: list[float] = []
    started_all = time.perf_counter()
    for done, source in enumerate(sources, 1):
        with Image.open(io.BytesIO(source.data)) as im:
            original = im.convert("RGB")
        rng = np.random.default_rng([seed, source.number, 1])
        for e, edit in enumerate(EDITS):
            data = edited_copy(original, edit, source.number, rng)
            image = imaging.load_image(data, min_width=1, min_height=1).image  # as Searcher._read_image
            started = time.perf_counter()
            query = phash.query_hash(image).bits
            qhash_ms.append((time.perf_counter() - started) * 1000)
            distances = [phash.hamming(query, h) for h in source.hashes]
            order = (("single", single, distances[:1]), ("multi", multi, distances))
            for name, alias, stored in (order if (source.number + e) % 2 else order[::-1]):
                started = time.perf_counter()
                answer = searcher.search_image(data, k=K, index=alias)
                ms = (time.perf_counter() - started) * 1000
                results = answer["results"]
                mine = next((r for r in results if r["image_id"] == source.image_id), None)
                others = [r for r in results if r["match"] == "near" and r["image_id"] != source.image_id]
                records.append(Record(
                    kind=source.kind, edit=edit, index=name,
                    top1=bool(results) and results[0]["image_id"] == source.image_id,
                    top1_match=results[0]["match"] if results else None,
                    near=mine is not None and mine["match"] == "near", found=mine is not None,
                    false_near=len(others), near_results=sum(r["match"] == "near" for r in results),
                    exact_results=sum(r["match"] == "exact" for r in results),
                    within=min(stored) <= near_bits, number=source.number, query_bits=query,
                    distance=min(stored),
                    matched_crop=mine.get("matched_crop") if mine else None, ms=ms,
                    false_examples=[(by_id[r["image_id"]].kind if r["image_id"] in by_id else "?",
                                     r.get("distance_bits"), r.get("matched_crop")) for r in others]))
        if done % 50 == 0 or done == len(sources):
            elapsed = time.perf_counter() - started_all
            print(f"  queried the copies of {done}/{len(sources)} images ({elapsed:.0f} s)", file=sys.stderr,
                  flush=True)
    return records, qhash_ms


def share(records: list[Record], attribute: str) -> float:
    return sum(bool(getattr(r, attribute)) for r in records) / len(records) if records else float("nan")


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def print_report(records: list[Record], near_bits: int) -> None:
    groups: dict[tuple[str, str], list[Record]] = {}
    for r in records:
        groups.setdefault((r.index, r.edit), []).append(r)
    print(f"\nPer edit kind (k={K}; single-hash | multi-crop; near = the source returned labelled near, "
          f"within {near_bits} bits)")
    head = (f"{'edit':<18} {'copies':>6} | {'single  multi':>13} | {'single  multi':>13} | {'single  multi':>13} | "
            f"{'single  multi':>13} | {'target':>6} {'multi near':>10}")
    print(f"{'':<18} {'':>6} | {'top-1':^13} | {'near':^13} | {'false near':^13} | "
          f"{'hash <= ' + str(near_bits):^13} |")
    print(head)
    print("-" * len(head))
    rows = [*EDITS, "all"]
    for edit in rows:
        single = [r for r in records if r.index == "single" and (edit == "all" or r.edit == edit)]
        multi = [r for r in records if r.index == "multi" and (edit == "all" or r.edit == edit)]
        cells = []
        for attribute in ("top1", "near", "false_near", "within"):
            cells.append(f"{share(single, attribute):>6.3f} {share(multi, attribute):>6.3f}")
        target = TARGETS.get(edit)
        verdict = "" if target is None else ("met" if share(multi, "near") >= target else "MISSED")
        print(f"{EDIT_LABELS.get(edit, edit):<18} {len(multi):>6} | {cells[0]} | {cells[1]} | {cells[2]} | "
              f"{cells[3]} | {('>= ' + format(target, '.2f')) if target else '':>6} {verdict:>10}")
    print("top-1: the source ranked first (any channel); false near: share of queries with at least one near "
          "result that is not the source; hash <=: computed here, the query image's whole hash within "
          f"{near_bits} bits of the source's stored hash(es) (what the near channel can find at best)")

    print("\nMulti-crop near share by image kind (single-hash in brackets)")
    print(f"{'kind':<9} {'images':>6} " + " ".join(f"{EDIT_LABELS[e]:>17}" for e in EDITS))
    for kind in KINDS:
        cells = []
        for edit in EDITS:
            m = [r for r in records if r.kind == kind and r.edit == edit and r.index == "multi"]
            s = [r for r in records if r.kind == kind and r.edit == edit and r.index == "single"]
            cells.append(f"{share(m, 'near'):.3f} ({share(s, 'near'):.3f})")
        count = sum(1 for r in records if r.kind == kind and r.edit == EDITS[0] and r.index == "multi")
        print(f"{kind:<9} {count:>6} " + " ".join(f"{c:>17}" for c in cells))

    print("\nFalse near labels (near results that are not the source)")
    for index in ("single", "multi"):
        mine = [r for r in records if r.index == index]
        false = sum(r.false_near for r in mine)
        near = sum(r.near_results for r in mine)
        exact = sum(r.exact_results for r in mine)
        kinds = Counter(f"{r.kind}->{ex[0]}" for r in mine for ex in r.false_examples)
        dist = Counter(ex[1] for r in mine for ex in r.false_examples)
        print(f"  {index:<6}: {false} of {near} near results ({false / near if near else 0:.3f}) in "
              f"{sum(r.false_near > 0 for r in mine)} of {len(mine)} queries; exact labels: {exact}"
              + (f"; query kind->found kind: {dict(kinds.most_common(6))}; distance bits: "
                 f"{dict(sorted(dist.items(), key=lambda kv: (kv[0] is None, kv[0] or 0)))}" if false else ""))

    print("\nNear channel vs the hashes computed here")
    for index in ("single", "multi"):
        mine = [r for r in records if r.index == index]
        missed = [r for r in mine if r.within and not r.near]
        extra = [r for r in mine if r.near and not r.within]
        line = (f"  {index:<6}: within {near_bits} bits but not labelled near: {len(missed)}"
                + (f" ({dict(Counter(r.edit for r in missed))}; source in the results at all: "
                   f"{sum(r.found for r in missed)}; all {K} slots taken by other near results: "
                   f"{sum(r.false_near >= K for r in missed)})" if missed else "")
                + f"; labelled near but further than {near_bits} bits: {len(extra)}")
        print(line)
    semantic = Counter((r.index, r.top1_match) for r in records if r.top1)
    print("  top-1 hits by the label of the source: " + ", ".join(f"{i} {m} {n}" for (i, m), n in
                                                                   sorted(semantic.items(), key=str)))
    parts = []
    for edit in EDITS:
        crops = Counter(r.matched_crop for r in records if r.index == "multi" and r.near and r.edit == edit)
        parts.append(f"{EDIT_LABELS[edit]}: " + ", ".join(f"{c} {n}" for c, n in crops.most_common(3)))
    print("  multi-crop, stored hash that matched (most common per edit): " + "; ".join(parts))
    distances = {e: [r.distance for r in records if r.index == "multi" and r.edit == e] for e in EDITS}
    print("  multi-crop, smallest distance to the source's hashes, median / p95 / max bits: " + "; ".join(
        f"{EDIT_LABELS[e]} {pct(d, 50):.0f}/{pct(d, 95):.0f}/{max(d)}" for e, d in distances.items() if d))
    distances = {e: [r.distance for r in records if r.index == "single" and r.edit == e] for e in EDITS}
    print("  single-hash, distance to the source's whole hash, median / p95 / max bits: " + "; ".join(
        f"{EDIT_LABELS[e]} {pct(d, 50):.0f}/{pct(d, 95):.0f}/{max(d)}" for e, d in distances.items() if d))


# -- main -------------------------------------------------------------------------------------------------------


def choose_models(settings: Any, force_standin: bool) -> tuple[dict[str, str], str]:
    """The configured models where they can be loaded (and --standin is not given), else the tiny stand-ins."""
    from pipelines.embedding import ModelUnavailable, check_model
    from pipelines.standin_models import build_models

    if not force_standin:
        try:
            for setting in ("IMGSEARCH_IMAGE_MODEL", "IMGSEARCH_TEXT_MODEL"):
                check_model(settings.get(setting), setting)
            return {}, "configured"
        except ModelUnavailable as exc:
            reason = str(exc).split(". Download")[0]
            print(f"Note: {reason}; using the tiny stand-in models (random weights: semantic ranking is "
                  f"meaningless, the near channel is not affected).", flush=True)
    image, text = build_models(Path(settings.get("IMGSEARCH_CACHE_DIR")) / "bench" / "models-tiny", "tiny")
    return {"IMGSEARCH_IMAGE_MODEL": str(image), "IMGSEARCH_TEXT_MODEL": str(text)}, "tiny stand-in"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=500, help="distinct generated images (kinds in turn)")
    p.add_argument("--seed", type=int, default=7, help="seed of the images and of the random crops")
    p.add_argument("--near-bits", type=int, default=None,
                   help="IMGSEARCH_QUERY_NEAR_BITS for the queries (default: the setting, 10)")
    p.add_argument("--keep", action="store_true", help="do not delete the scratch indices at the end")
    p.add_argument("--standin", action="store_true", help="use the tiny stand-in models even if CLIP loads")
    p.add_argument("--es-url", default=None, help="Elasticsearch URL (default: ES_URL or the local node)")
    return p.parse_args(argv)


def _sigterm(signum, frame):  # noqa: ARG001
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.images < 2:
        raise SystemExit("--images needs at least 2")
    signal.signal(signal.SIGTERM, _sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    from cli import ensure_local_node
    from crawler.config import load_settings
    from index_setup.client import cluster_info, es_client
    from index_setup.indices import delete_indices, ensure_indices
    from pipelines.embedding import Embedder
    from query.search import Searcher

    overrides, model_note = choose_models(load_settings({"ES_URL": args.es_url}), args.standin)
    settings = load_settings({"ES_URL": args.es_url, "IMGSEARCH_QUERY_NEAR_BITS": args.near_bits, **overrides})
    near_bits = settings.getint("IMGSEARCH_QUERY_NEAR_BITS")
    ensure_local_node(settings)
    client = es_client(settings)
    version = cluster_info(client, settings)["version"]
    embedder = Embedder.from_settings(settings)
    started = time.perf_counter()
    embedder.load_image_model()
    print(f"CPU: {cpu_model()} x {os.cpu_count()} logical cores; load average {os.getloadavg()[0]:.2f} at start; "
          f"python {platform.python_version()}; Elasticsearch {version}")
    print(f"Model: {model_note} {embedder.image_model_name} ({embedder.dims} dims, loaded in "
          f"{time.perf_counter() - started:.1f} s); near channel: within {near_bits} bits, k={K}")

    started = time.perf_counter()
    sources = generate(args.images, args.seed)
    by_kind = Counter(s.kind for s in sources)
    print(f"Images: {len(sources)} distinct ({', '.join(f'{k} {n}' for k, n in by_kind.items())}), generated in "
          f"{time.perf_counter() - started:.1f} s; {sum(len(s.data) for s in sources) / len(sources) / 1e3:.0f} kB "
          f"each on average", flush=True)

    run = uuid.uuid4().hex[:8]
    multi, single = f"bench-copies-{run}-multi", f"bench-copies-{run}-single"
    timings = Timings()
    try:
        for alias in (multi, single):
            ensure_indices(client, alias, dims=embedder.dims, model=embedder.image_model_name)
        started = time.perf_counter()
        outcomes = index_sources(settings, embedder, sources, multi, single, timings)
        client.indices.refresh(index=",".join(f"{a},{a}-sources" for a in (multi, single)))
        counts = {a: client.count(index=a)["count"] for a in (multi, single)}
        smallest = min(sources, key=lambda s: s.width * s.height)
        largest = max(sources, key=lambda s: s.width * s.height)
        print(f"Indexed into {multi} and {single} in {time.perf_counter() - started:.1f} s (embedding "
              f"{timings.embed_s:.1f} s, bulk writes {timings.write_s:.1f} s): {counts[multi]} + {counts[single]} "
              f"image documents; actions {dict(outcomes)}; sizes {smallest.width}x{smallest.height} .. "
              f"{largest.width}x{largest.height}")
        if outcomes.get("ok", 0) != sum(outcomes.values()) or counts[multi] != len(sources):
            raise SystemExit(f"indexing failed: {dict(outcomes)}, {counts}")
        alone_whole, alone_any = collisions(sources, near_bits)
        print(f"Originals whose whole hash is within {near_bits} bits of another original's whole hash: "
              f"{alone_whole} of {len(sources)}; of any of its stored hashes: {sum(alone_any.values())} "
              f"({', '.join(f'{k} {n}' for k, n in alone_any.most_common())})")

        searcher = Searcher(settings, embedder=embedder, client=client)
        for alias in (multi, single):  # warm-up, not measured
            for source in sources[:3]:
                searcher.search_image(source.data, k=K, index=alias)
        started = time.perf_counter()
        by_id = {s.image_id: s for s in sources}
        records, qhash_ms = query_copies(searcher, sources, multi, single, args.seed, near_bits, by_id)
        query_s = time.perf_counter() - started
        print(f"Queried {len(records) // 2} copies x 2 indices in {query_s:.1f} s")

        print_report(records, near_bits)
        print_sweep(records, sources, near_bits)
        print("\nTimings (ms, this machine, shared)")
        print(f"  load_image (source): mean {np.mean(timings.decode_ms):.1f}; image_hashes, all hashes: mean "
              f"{np.mean(timings.hash16_ms):.2f}, p95 {pct(timings.hash16_ms, 95):.2f}; whole-image hash only "
              f"(query_hash): mean {np.mean(timings.hash1_ms):.2f} at indexing, {np.mean(qhash_ms):.2f} on copies; "
              f"embedding {timings.embed_s / len(sources) * 1000:.1f} per image")
        for index in ("single", "multi"):
            ms = [r.ms for r in records if r.index == index]
            print(f"  search_image({index}): mean {np.mean(ms):.1f}, p50 {pct(ms, 50):.1f}, p95 {pct(ms, 95):.1f}, "
                  f"max {max(ms):.1f} (decode + hash + embed + msearch + sources, client wall time)")
        print(f"CPU {cpu_model()}; load average {os.getloadavg()[0]:.2f} at end")
    finally:
        if args.keep:
            print(f"\nKept the indices {multi} and {single} (with -sources and -urls)", file=sys.stderr)
        else:
            deleted = delete_indices(client, multi) + delete_indices(client, single)
            print(f"\nDeleted scratch indices: {', '.join(deleted) or 'none'}", file=sys.stderr)
        client.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
