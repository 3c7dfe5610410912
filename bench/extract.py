"""How long image extraction takes on a page of huge attribute values, beside a page of plain text of the same size.

    python bench/extract.py

The hostile page is tests/test_extract.py's (a 5 MB data: URI, a 20,000-character URL, a 1 MB alt text, 100,000
open parentheses in a style, a 300 kB srcset of bad candidates): each value is skipped or read in one linear
pass, so the hostile page should cost about what parsing its bytes costs (the plain page), not seconds.
"""

from __future__ import annotations

import statistics
import time

from scrapy.http import HtmlResponse

from crawler.extract import extract_images


def hostile_page() -> str:
    data_uri = "data:image/png;base64," + "A" * 5_000_000
    return (f'<img src="{data_uri}"><img src="https://cdn.example/{"a" * 20_000}.jpg">'
            f'<img srcset="{data_uri} 1x, {data_uri} 2x">'
            f'<div style="background-image: url(\'{data_uri}\'), url(ok.jpg)"></div>'
            f'<img src="small.jpg" alt="{"x" * 1_000_000}">'
            f"<div style=\"background: {'(' * 100_000}\"></div>"
            f'<img srcset="{"a.jpg (" * 50_000}">')


def plain_page(size: int) -> str:
    return "<p>" + "Some text about a picture. " * (size // 27) + "</p>"


def seconds(body: str, runs: int = 5) -> float:
    times = []
    for _ in range(runs):
        response = HtmlResponse("https://site.example/dir/page.html", body=body.encode(), encoding="utf-8")
        start = time.perf_counter()
        extract_images(response)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    hostile = hostile_page()
    plain = plain_page(len(hostile))
    hostile_s, plain_s = seconds(hostile), seconds(plain)
    print(f"hostile page {len(hostile) / 1e6:.1f} MB: {hostile_s * 1000:8.1f} ms (median of 5)")
    print(f"plain page   {len(plain) / 1e6:.1f} MB: {plain_s * 1000:8.1f} ms (median of 5)")
    print(f"hostile / plain: {hostile_s / plain_s:.2f}")


if __name__ == "__main__":
    main()
