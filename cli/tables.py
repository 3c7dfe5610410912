"""Readable text for query results."""

from __future__ import annotations

from typing import Any


def _day(timestamp: str | None) -> str:
    return (timestamp or "")[:16].replace("T", " ")


def results_table(response: dict[str, Any], *, note: str | None = None) -> str:
    query = response["query"]
    if query["type"] == "text":
        what = f'text "{query["text"]}"'
    else:
        what = f"image {query.get('source') or query['sha256'][:16]}"
    lines = [f"Query: {what} — {len(response['results'])} result(s) in {response['took_ms']:.0f} ms"]
    if note:
        lines.append(f"  ({note})")
    for rank, r in enumerate(response["results"], 1):
        size = f"{r['width']}x{r['height']}" if r.get("width") else "?"
        match = f"near {r['distance_bits']}b" if r["match"] == "near" else r["match"]
        lines.append(f"{rank:>3}. {r['score']:.3f}  {match:<8} {size:>9} {r.get('format') or '':<5} "
                     f"{r.get('image_name') or r['image_id'][:16]}  <{r.get('image_url')}>")
        for source in r["sources"][:3]:
            title = source.get("page_title") or "(untitled)"
            lines.append(f"        seen on {title} <{source['page_url']}> since {_day(source.get('first_seen'))}"
                         f"{_gone(source)}")
        more = r["sources_total"] - min(3, len(r["sources"]))
        if more > 0:
            lines.append(f"        … and {more} more page(s)")
    if not response["results"]:
        lines.append("  no match")
    lines += [f"  ({note})" for note in response.get("notes", [])]
    return "\n".join(lines)


def sources_table(response: dict[str, Any]) -> str:
    """The source finder's answer: the oldest known source first, then every page, oldest first."""
    query = response["query"]
    what = query.get("source") or query["sha256"][:16]
    oldest = response["oldest"]
    if oldest is None:
        lines = [f"No indexed copy of {what} (exact or near duplicate) found."]
    else:
        lines = [f"Oldest known source: {oldest['page_url']} (first seen {_day(oldest['first_seen'])}, "
                 f"{_match(oldest)})",
                 f"{response['sources_total']} page(s) show {what} or a copy of it "
                 f"({len(response['images'])} indexed image(s)); in {response['took_ms']:.0f} ms:"]
    for source in response["sources"]:
        title = source.get("page_title") or "(untitled)"
        lines.append(f"  {_day(source['first_seen'])}  {_match(source):<12} {title}  <{source['page_url']}>"
                     f"  image <{source['image_url']}>{_gone(source)}")
    more = response["sources_total"] - len(response["sources"])
    if more > 0:
        lines.append(f"  … and {more} more page(s) (--limit)")
    lines += [f"  ({note})" for note in response.get("notes", [])]
    return "\n".join(lines)


def _gone(source: dict[str, Any]) -> str:
    """A source `imgsearch check-sources` found gone (the page, or the image on it): when, and why."""
    if not source.get("gone_since"):
        return ""
    reason = source.get("gone_reason")
    return f"  [gone since {_day(source['gone_since'])}{f': {reason}' if reason else ''}]"


def _match(source: dict[str, Any]) -> str:
    return f"near ({source['distance_bits']} bits)" if source["match"] == "near" else source["match"]
