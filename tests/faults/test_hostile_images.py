"""Over fifty classes of malformed and hostile images (tests/faults/hostile_images.py), served by a test site
and crawled for real: no crash, no traceback, every one counted under a reason, the valid ones indexed with their
upright width and height.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter

import pytest

from crawler.sample_site import Route, SiteServer, page
from tests.faults.crawls import Crawl
from tests.faults.hostile_images import Indexed, hostile_images

# The fetch stage's one WARNING line per refused image: "Image skipped too_small (URL) on PAGE: detail".
REFUSED = re.compile(r"Image (skipped|failed) (\w+) \((\S+)\) on ")


@pytest.fixture(scope="module")
def crawled(es, index_alias, crawl_settings_env, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("hostile")
    env = {**crawl_settings_env, "IMGSEARCH_INDEX": index_alias,
           "IMGSEARCH_INDEX_DEAD_LETTER_DIR": str(workdir / "dead-letter")}
    with SiteServer() as site:
        images = hostile_images(site.url + "/xxe-target")
        site.routes.update({h.path: Route(h.data, h.content_type) for h in images.values()})
        site.routes["/xxe-target"] = Route(b"secret", "text/plain")
        site.routes["/robots.txt"] = Route(b"User-agent: *\nAllow: /\n", "text/plain")
        names = sorted(images)
        half = len(names) // 2
        for n, part in enumerate((names[:half], names[half:])):
            site.routes[f"/gallery/{n}.html"] = page(f"Hostile images {n}", "".join(
                f'<img src="{images[name].path}" alt="{name}">' for name in part))
        site.routes["/"] = page("Hostile images", '<a href="/gallery/0.html">0</a><a href="/gallery/1.html">1</a>')
        result = Crawl([site.url + "/"], env, workdir).wait(240)
        xxe_fetches = site.fetched("/xxe-target")
    es.indices.refresh(index=index_alias)
    docs = {h["_id"]: h["_source"] for h in es.search(index=index_alias, size=1000, source=[
        "width", "height", "format", "image_url"])["hits"]["hits"]}
    refused = {m.group(3).rsplit("/", 1)[-1]: f"{m.group(1)}/{m.group(2)}" for m in REFUSED.finditer(result.stderr)}
    return images, result, docs, refused, xxe_fetches


def outcome_of(name: str, images, docs, refused) -> Indexed | str:
    hostile = images[name]
    doc = docs.get(hashlib.sha256(hostile.data).hexdigest())
    if doc is not None:
        return Indexed(doc["width"], doc["height"], doc["format"])
    return refused.get(hostile.path.rsplit("/", 1)[-1], "nothing: neither indexed nor counted")


def test_every_hostile_image_is_indexed_upright_or_counted_under_its_reason(crawled, fault_table):
    images, result, docs, refused, xxe_fetches = crawled
    wrong = {}
    for name, hostile in images.items():
        got = outcome_of(name, images, docs, refused)
        happened = (f"indexed {got.width}x{got.height} {got.format}" if isinstance(got, Indexed) else got)
        if got != hostile.expected:
            wrong[name] = (got, hostile.expected)
            happened += f" (expected {hostile.expected})"
        lost = int(isinstance(hostile.expected, Indexed) and not isinstance(got, Indexed))
        fault_table.row(f"image: {hostile.what}", happened, lost)
    expected_counts = Counter(h.expected for h in images.values() if isinstance(h.expected, str))
    counted = {reason: result.stat(f"imgsearch/fetch/{reason}") for reason in expected_counts}
    valid = sum(isinstance(h.expected, Indexed) for h in images.values())
    fault_table.row(f"{len(images)} hostile image classes, one crawl",
                    f"exit {result.returncode}, {result.seconds:.0f} s, peak RSS {result.peak_rss_mb:.0f} MB, "
                    f"{result.stderr.count('Traceback')} tracebacks; {len(docs)} of {valid} valid indexed; "
                    f"found {result.stat('imgsearch/find/found')}; SVG entity target fetched {xxe_fetches} times",
                    sum(isinstance(h.expected, Indexed) for h in images.values()) - len(docs))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[result.stderr.index("Traceback") - 300:][:3000]
    assert result.stat("imgsearch/find/found") == len(images)
    assert wrong == {}
    assert counted == dict(expected_counts), "every refused image counted under its reason, once"
    assert len(docs) == valid, "nothing else indexed"
    assert xxe_fetches == 0, "an SVG's external entity is never resolved"
    assert len(images) >= 30


STRIP_PROBE = """
import io, resource, sys
import torch  # imported before the measurement: its own few hundred MB are not the strip's
from PIL import Image
from pipelines.embedding import PixelRecipe, prepare_pixels
from pipelines.imaging import ImageRejected, load_image

buffer = io.BytesIO()
Image.new("RGB", (32, 200_000), (200, 30, 30)).save(buffer, "PNG")
try:
    loaded = load_image(buffer.getvalue())
except ImageRejected as exc:
    print("rejected", exc.reason, 0)
    sys.exit(0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
# CLIP's image processor: shortest side to 224 (bicubic), centre crop 224x224, rescale, normalise.
recipe = PixelRecipe(shortest_edge=224, size=None, resample=3, crop=(224, 224), scale=1 / 255,
                     mean=(0.4815, 0.4578, 0.4082), std=(0.2686, 0.2613, 0.2758))
prepare_pixels([loaded.image], recipe)
print("accepted", loaded.image.size, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_a_narrow_strip_within_every_cap_costs_little_memory_to_embed(fault_table):
    probe = subprocess.run([sys.executable, "-c", STRIP_PROBE], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert probe.returncode == 0, probe.stderr[-2000:]
    verdict, *_, grown_mb = probe.stdout.split()
    fault_table.row("image: PNG 32x200000 (6.4 MP, within every cap), prepared for CLIP",
                    f"{verdict} by load_image; preparing its pixels took {grown_mb} MB more peak RSS "
                    f"(only the centre crop's part is resized)", 0)
    assert verdict == "accepted", probe.stdout  # within every cap: a strip is an image the crawl must embed
    assert int(grown_mb) < 300
