"""Find the image URLs of an HTML page (and the links it follows): the one pure extraction step the spiders call
on each response.

One XPath query walks the parsed page (the response's cached selector) in document order and picks up:

- `<img>`: the largest candidate of its srcset, else its src, with lazy-load attributes (`data-srcset`,
  `data-src`, `data-lazy`, ...) preferred over the native ones, which are often placeholders; an `<image>`
  outside SVG is an `<img>` to the HTML parser and is read as one;
- `<picture>`: the largest candidate across its decodable `<source srcset>` and its `<img>`;
- `og:image` / `twitter:image` meta tags (with their `:alt`), `<link rel="image_src">` and
  `<link rel="preload" as="image">` (the largest candidate of its imagesrcset, else its href);
- `<video poster>` and the `href` / `xlink:href` of inline SVG `<image>`s;
- `background` / `background-image` in inline `style` attributes, `url()` and `image-set()`, unless the
  element has a lazy background (`data-bgset`, the largest candidate of lazysizes' srcset-like sets, else
  `data-bg` / `data-background-image`, a URL or a CSS `url()` value), which is read instead;
- `background` / `background-image` in the rule blocks of `<style>` elements (in the `<style>`'s place).

URLs are resolved against `<base href>`, made safe, stripped of fragments and kept only when http(s).
Nothing is filtered by extension: the fetch stage sniffs the bytes. `page_links` resolves `<a href>` and
`<area href>` the same way.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin, urlsplit
from weakref import WeakKeyDictionary

from lxml import etree
from parsel import Selector
from scrapy.http import TextResponse
from w3lib.url import safe_url_string

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FoundImage:
    """An image URL found on a page."""

    image_url: str  # absolute http(s) URL, without fragment
    alt_text: str  # alt (or title) text of the <img>, og:image:alt for meta tags; "" when none


# Longer "URLs" are not image addresses (servers refuse them) and would only bloat items and logs.
MAX_URL_CHARS = 8192

# MIME types of <picture> sources worth choosing: those the fetch stage decodes (see pipelines/imaging.py).
# A source of any other type (jxl, svg, ...) is skipped so that the <img> fallback is chosen instead.
DECODABLE_TYPES = frozenset({
    "image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/apng", "image/gif", "image/webp",
    "image/bmp", "image/x-ms-bmp", "image/tiff", "image/avif", "image/heic", "image/heif",
})

# Every element that can carry an image, in one query so that the results come in document order.
_ELEMENTS = etree.XPath(
    "//img | //image | //picture | //meta[@content] | //link[@href or @imagesrcset] | //video[@poster] | //style"
    " | //*[@style or @data-bg or @data-background-image or @data-bgset]"
)
# The first <base> with an href sets the base URL (later ones are ignored, an empty href means none).
_BASE_HREF = etree.XPath("(//base[@href])[1]/@href")
# An SVG <title> is not the page's.
_TITLE = etree.XPath("(//title[not(ancestor::svg)])[1]")
_META = etree.XPath("//meta[@content]")
_LINKS = etree.XPath("//a[@href] | //area[@href]")

# Pages parsed here rather than by Scrapy (see _html_selector), each once while its response lives.
_OWN_SELECTORS: WeakKeyDictionary[TextResponse, Selector] = WeakKeyDictionary()

# Lazy loaders keep the real URL in these while src/srcset hold a placeholder, so they are read first.
# Each tier is (srcset-like attributes, src-like attributes). Beyond the generic data-src / data-srcset
# (lazysizes, lozad, LiteSpeed, Smush, ...) and data-lazy-src / data-lazy-srcset (WP Rocket, Jetpack):
# data-original and data-original-set (jquery.lazyload, vanilla-lazyload before v10), data-lazy (slick, the
# common carousel), data-lazyload (Slider Revolution, on a great many WordPress sites) and data-orig-src
# (the Avada theme). Rarer ones (echo.js's data-echo, data-hi-res-src, ...) are left out: each attribute
# read is one more chance of taking something that is no image of the page.
_IMG_TIERS = (
    (
        ("data-srcset", "data-lazy-srcset", "data-original-set"),
        ("data-src", "data-lazy-src", "data-original", "data-lazy", "data-lazyload", "data-orig-src"),
    ),
    (("srcset",), ("src",)),
)
_SOURCE_TIERS = (
    (("data-srcset", "data-lazy-srcset"), ()),
    (("srcset",), ()),
)
_PRELOAD_TIERS = ((("imagesrcset",), ("href",)),)

_OG_IMAGE = frozenset({"og:image", "og:image:url", "og:image:secure_url"})
_TWITTER_IMAGE = frozenset({"twitter:image", "twitter:image:src"})
_IMAGE_ALT = {"og:image:alt": "og", "twitter:image:alt": "twitter"}
_BACKGROUND_PROPERTIES = frozenset({"background", "background-image"})
# Lazy background attributes, read on any element in this order; the first that gives a URL replaces the
# inline style's background (the loaders write it into style.backgroundImage, over any placeholder there).
_LAZY_BACKGROUND_SRC = ("data-bg", "data-background-image")  # lazysizes unveilhooks, vanilla-lazyload; lozad
# Some sites use these attributes, data-lazy above all, as flags or settings (data-lazy="true", data-lazy="0.5",
# data-bg="dark", data-lazyload='{"threshold": 0.5}'): a value is taken for a URL only when it has a path
# separator or a file extension (before a query, a descriptor or the end), else the native attribute (or
# style) is read instead.
_URL_LIKE = re.compile(r"""/|\.[A-Za-z][A-Za-z0-9]{1,4}(?=[\s?#,)'"]|$)""")

# A candidate's size, comparable across candidates: any width descriptor beats any density descriptor.
_Score = tuple[int, float]
_ONE_X: _Score = (0, 1.0)

# The URL parser drops tabs and newlines anywhere (entity-encoded ones included) and trims C0 controls and
# spaces at both ends.
_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
_C0_AND_SPACE = "".join(chr(c) for c in range(0x21))
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")

# srcset tokenising, after https://html.spec.whatwg.org/multipage/images.html#parsing-a-srcset-attribute
_SRCSET_GAP = re.compile(r"[\t\n\f\r ,]*")
_SRCSET_URL = re.compile(r"[^\t\n\f\r ]+")
_SRCSET_DESCRIPTORS = re.compile(r"(?:[^,(]+|\([^)]*\)?)*")  # up to a comma outside parentheses
_DESCRIPTOR_TOKEN = re.compile(r"(?:[^\t\n\f\r (]+|\([^)]*\)?)+")
_NON_NEGATIVE_INTEGER = re.compile(r"[0-9]+\Z")
_FLOATING_POINT = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?\Z")

# Inline CSS. Quoted strings and parentheses (two levels: image-set(url(...))) are matched whole, so that the
# ';' and ',' inside them (data: URLs have both) split nothing. Once a pattern's opening part matches, the
# rest always does, so the engine never backtracks through a long value.
_CSS_QUOTED = r"""(?:"[^"]*"?|'[^']*'?)"""
_CSS_PARENS = rf"""\((?:[^()"']+|{_CSS_QUOTED})*\)?"""
_CSS_NESTED_PARENS = rf"""\((?:[^()"']+|{_CSS_QUOTED}|{_CSS_PARENS})*\)?"""
_CSS_URL = r"""url\(\s*(?:"(?P<dq>[^"]*)"?|'(?P<sq>[^']*)'?|(?P<uq>(?:\\.|[^)\s"'\\])*))"""
# One declaration, or, when it has no colon, whatever runs up to the next ';'.
_CSS_DECLARATION = re.compile(
    rf"""(?P<name>[^:;"'(]*):(?P<value>(?:[^;"'(]+|{_CSS_QUOTED}|{_CSS_NESTED_PARENS})*);?
        |[^;]*;?""",
    re.X,
)
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|\Z)", re.S)
_CSS_IMAGE = re.compile(
    rf"""(?<![\w-])(?:-webkit-)?image-set\((?P<set>(?:[^()"']+|{_CSS_QUOTED}|{_CSS_PARENS})*)\)?
        |(?<![\w-]){_CSS_URL}""",
    re.X | re.I,
)
_IMAGE_SET_OPTION = re.compile(
    rf"""(?:{_CSS_URL}\s*\)?|"(?P<ds>[^"]*)"?|'(?P<ss>[^']*)'?)
        (?P<rest>(?:[^,"'(]+|\([^)]*\)?)*)""",
    re.X | re.I,
)
_RESOLUTION = re.compile(r"(?<![\w.])([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)(x|dppx|dpi|dpcm)\b", re.I)
_TYPE_FUNCTION = re.compile(r"""type\(\s*(?:"([^"]*)"|'([^']*)')""", re.I)
_DENSITY_UNITS = {"x": 1.0, "dppx": 1.0, "dpi": 1 / 96, "dpcm": 2.54 / 96}
_CSS_ESCAPE = re.compile(r"\\(?:([0-9A-Fa-f]{1,6})[ \t\n\r\f]?|\n|(.))", re.S)
# A data-bg value that starts with an image-valued CSS function (url(), image-set(), a gradient) is a CSS
# value; anything else is a URL, which may hold parentheses (".../File:A_(b).jpg", "IMG_1(1).jpg").
_CSS_FUNCTION_START = re.compile(
    r"\s*(?:url|(?:-webkit-)?image-set|(?:-webkit-|-moz-)?(?:repeating-)?(?:linear|radial|conic)-gradient)\(", re.I)

# Stylesheets (<style>). The text between two braces, with strings matched whole so that a brace inside one
# (content: "}") splits nothing; a string ends at a newline as in CSS, so a stray quote cannot swallow the
# sheet. It always matches, so the engine never backtracks.
_CSS_SHEET_STRING = r"""(?:"(?:[^"\\\n]+|\\.)*"?|'(?:[^'\\\n]+|\\.)*'?)"""
# A closed, unquoted url(...) is one token too, whatever braces it holds ("url(/x{1}.jpg)"); CSS ends one at
# a quote, a parenthesis or white space, and an unclosed one is read as text.
_CSS_SHEET_URL = r"""[uU][rR][lL]\(\s*(?:\\.|[^)"'\s(\\])*\s*\)"""
_CSS_SHEET_TEXT = re.compile(rf"""(?:[^{{}}"'\\uU]+|{_CSS_SHEET_URL}|[uU]|\\.?|{_CSS_SHEET_STRING})*""", re.S)

# lazysizes bgset: sets separated by a '|' with whitespace on at least one side, each a srcset followed by
# optional "[media query]" / "[type: image/webp]" options (each after whitespace).
_BGSET_SEPARATOR = re.compile(r"(?<=\s)\||\|(?=\s)")
_BGSET_OPTIONS = re.compile(r"\s\[")
_BGSET_TYPE = re.compile(r"\[\s*(?:\(\s*)*type\s*:\s*([^\s\])]*)", re.I)

_Resolve = Callable[[str], str | None]


def extract_images(response: TextResponse) -> list[FoundImage]:
    """Return the images of an HTML page, in document order, one per absolute http(s) URL.

    A URL seen twice is reported where it first appears, with the first non-empty alt text it had.
    Any response that is not a TextResponse gives [], and so does a page that cannot be parsed.
    """
    root = _root(response)
    if root is None:
        return []
    base = _base_url(root, response)
    encoding = response.encoding

    def resolve(raw: str) -> str | None:
        return absolute_image_url(raw, base, encoding)

    found: dict[str, str] = {}  # URL -> alt text, in insertion (document) order

    def add(url: str | None, alt: str) -> None:
        if url is not None and (url not in found or (alt and not found[url])):
            found[url] = alt

    handled_imgs: set[etree._Element] = set()  # <img>s already read as part of their <picture>
    meta_groups: dict[str, list[str]] = {}  # og/twitter -> URLs of the image an :alt tag describes
    pending_alts: dict[str, str] = {}  # an :alt tag seen before its image

    for element in _ELEMENTS(root):
        tag = element.tag
        if tag == "img" or (tag == "image" and not _in_svg(element)):
            if element not in handled_imgs:
                add(_best_url(_choose(element, _IMG_TIERS, resolve)), _alt_text(element))
        elif tag == "image":
            # SVG 2: href, when present, wins over the older xlink:href (whose name lxml keeps as it is).
            href = element.get("href")
            add(resolve(href if href is not None else element.get("xlink:href") or ""), "")
        elif tag == "picture":
            chosen, img = _picture_choice(element, resolve)
            if img is not None:
                handled_imgs.add(img)
            add(_best_url(chosen), _alt_text(img) if img is not None else "")
        elif tag == "meta":
            _read_meta(element, resolve, add, meta_groups, pending_alts)
        elif tag == "link":
            add(_best_url(_link_choice(element, resolve)), "")
        elif tag == "video":
            add(resolve(element.get("poster") or ""), "")
        elif tag == "style":
            for url in stylesheet_image_urls("".join(element.itertext()), resolve):
                add(url, "")
        lazy_backgrounds = _lazy_background_urls(element, resolve)
        if lazy_backgrounds:
            for url in lazy_backgrounds:
                add(url, "")
            continue
        style = element.get("style")
        if style and "(" in style:
            for url in style_image_urls(style, resolve):
                add(url, "")
    return [FoundImage(image_url=url, alt_text=alt) for url, alt in found.items()]


def page_links(response: TextResponse) -> list[str]:
    """Return the URLs of the page's `<a href>` and `<area href>` links, in document order, each once.

    They are resolved as the images are (against `<base href>`, by absolute_image_url): absolute http(s) URLs
    without fragment. Any response that is not a TextResponse gives [], and so does a page that cannot be parsed.
    """
    root = _root(response)
    if root is None:
        return []
    base = _base_url(root, response)
    encoding = response.encoding
    links: dict[str, None] = {}
    for element in _LINKS(root):
        url = absolute_image_url(element.get("href") or "", base, encoding)
        if url is not None:
            links[url] = None
    return list(links)


def page_title(response: TextResponse) -> str:
    """Return the page's <title>, else its og:title, whitespace-normalised; "" when it has neither."""
    root = _root(response)
    if root is None:
        return ""
    titles = _TITLE(root)
    title = _normalise(titles[0].xpath("string()")) if titles else ""
    if title:
        return title
    for meta in _META(root):
        if "og:title" in _meta_names(meta):
            title = _normalise(meta.get("content") or "")
            if title:
                return title
    return ""


# Directives by which a site asks not to have its images indexed or used for AI (X-Robots-Tag, robots meta).
NO_IMAGE_INDEX = frozenset({"noai", "noimageai", "noimageindex"})


def robots_directives(values: Iterable[str], bot: str) -> set[str]:
    """The directives in X-Robots-Tag header values or robots meta contents that apply to `bot`: those with no
    user-agent prefix, and those prefixed with `bot:` ("googlebot: noindex" applies to googlebot only). `bot` is
    the crawl's BOT_NAME."""
    bot = bot.lower()
    found: set[str] = set()
    for value in values:
        prefix, colon, rest = value.partition(":")
        agent = prefix.strip().lower()
        if colon and agent and " " not in agent and "," not in agent and agent not in NO_IMAGE_INDEX:
            if agent != bot:
                continue
            value = rest
        found.update(d.strip().lower() for d in value.split(",") if d.strip())
    return found


def blocking_directive(values: Iterable[str], bot: str) -> str | None:
    """The first of noai / noimageai / noimageindex among the directives for `bot`, or None."""
    found = robots_directives(values, bot)
    return next((d for d in sorted(NO_IMAGE_INDEX) if d in found), None)


def noai_exempt(settings: Any, url: str) -> bool:
    """Whether noai / noimageai / noimageindex are ignored for this URL's site: its owner indexing it
    (IMGSEARCH_NOAI_EXEMPT_DOMAINS, comma-separated, subdomains included)."""
    host = (urlsplit(url).hostname or "").lower()
    exempt = [d.strip().lower() for d in settings.getlist("IMGSEARCH_NOAI_EXEMPT_DOMAINS") if d.strip()]
    return any(host == d or host.endswith("." + d) for d in exempt)


def page_directive_values(response: TextResponse, bot: str) -> list[str]:
    """X-Robots-Tag headers and the contents of <meta name="robots"> / <meta name="`bot`"> (the crawl's
    BOT_NAME)."""
    bot = bot.lower()
    values = [v.decode("latin-1") for v in response.headers.getlist(b"X-Robots-Tag")]
    root = _root(response)
    if root is not None:
        for meta in _META(root):
            name = (meta.get("name") or "").strip().lower()
            if name == "robots":
                values.append(meta.get("content") or "")
            elif name == bot:
                values.append(f"{bot}: {meta.get('content') or ''}")
    return values


def absolute_image_url(raw: str, base: str, encoding: str = "utf-8") -> str | None:
    """Resolve an attribute's URL against `base` the way a browser would, or None when it is not http(s).

    Tabs and newlines are dropped, the ends trimmed, the result made safe (percent-encoded; the query in
    the page's `encoding`) and its fragment removed. data:, javascript:, blob:, about: and other schemes,
    empty values, fragment-only references ("#top") and values over MAX_URL_CHARS give None.
    """
    url = raw.translate(_TAB_NEWLINE).strip(_C0_AND_SPACE)
    if not url or url.startswith("#") or len(url) > MAX_URL_CHARS:
        return None  # a fragment-only reference points at the page itself, never at an image
    scheme = _SCHEME.match(url)
    if scheme and scheme.group(1).lower() not in ("http", "https"):
        return None  # before joining: a data: URL can be megabytes long
    try:
        joined = urljoin(base, url)
        try:
            absolute = safe_url_string(joined, encoding)
        except UnicodeEncodeError:  # the query has a character the page's encoding lacks
            absolute = safe_url_string(joined, "utf-8")
        absolute = absolute.split("#", 1)[0]
        parts = urlsplit(absolute)
    except ValueError:  # e.g. an invalid IPv6 host
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or len(absolute) > MAX_URL_CHARS:
        return None
    return absolute


def parse_srcset(value: str) -> list[tuple[str, _Score]]:
    """Split a srcset attribute into (raw URL, size) candidates, dropping those with invalid descriptors.

    Follows the WHATWG algorithm: a URL runs up to whitespace (so it may contain commas), trailing commas
    on it separate candidates, and descriptors run up to a comma outside parentheses. The size is
    `(1, width)` for a `w` descriptor and `(0, density)` otherwise (no descriptor is 1x).
    """
    candidates: list[tuple[str, _Score]] = []
    pos, end = 0, len(value)
    while True:
        pos = _SRCSET_GAP.match(value, pos).end()
        if pos >= end:
            return candidates
        url_match = _SRCSET_URL.match(value, pos)
        assert url_match is not None  # the gap ends on a non-whitespace, non-comma character
        url, pos = url_match.group(), url_match.end()
        if url.endswith(","):
            candidates.append((url.rstrip(","), _ONE_X))
            continue
        descriptors = _SRCSET_DESCRIPTORS.match(value, pos)
        assert descriptors is not None  # the pattern matches the empty string
        pos = descriptors.end() + 1  # past the comma
        score = _descriptor_score(_DESCRIPTOR_TOKEN.findall(descriptors.group()))
        if score is not None:
            candidates.append((url, score))


def style_image_urls(style: str, resolve: _Resolve) -> list[str]:
    """Return the resolved image URLs of the background / background-image declarations of a style attribute.

    Every url() layer counts; of an image-set() only its largest decodable option does.
    """
    urls: list[str] = []
    for declaration in _CSS_DECLARATION.finditer(style):
        name = declaration.group("name")
        if not name:
            continue
        if "/*" in name:
            name = _CSS_COMMENT.sub("", name)
        if name.strip().lower() in _BACKGROUND_PROPERTIES:
            urls.extend(_css_value_image_urls(declaration.group("value"), resolve))
    return urls


def stylesheet_image_urls(css: str, resolve: _Resolve) -> list[str]:
    """Return the resolved image URLs of the background / background-image declarations of a stylesheet.

    Comments are dropped, then the text inside every block (`.a{...}`, `@media ... { .b{...} }`, and the
    declarations around nested rules) is read as a style attribute is; the preludes (selectors, at-rules)
    outside blocks are not. One pass over the text, each part read once: linear time on any input.
    """
    if "/*" in css:
        css = _CSS_COMMENT.sub("", css)
    urls: list[str] = []
    depth, pos, end = 0, 0, len(css)
    while True:
        text = _CSS_SHEET_TEXT.match(css, pos)
        assert text is not None  # the pattern matches the empty string
        if depth and "(" in text.group():
            urls.extend(style_image_urls(text.group(), resolve))
        pos = text.end()
        if pos >= end:
            return urls  # a block still open at the end is closed there, as a browser does
        depth = depth + 1 if css[pos] == "{" else max(depth - 1, 0)  # a stray '}' closes nothing
        pos += 1


def _css_value_image_urls(value: str, resolve: _Resolve) -> Iterator[str]:
    """The resolved URLs of a background value's url() layers and of the largest option of its image-set()s."""
    for image in _CSS_IMAGE.finditer(value):
        if image.group("set") is not None:
            url = _best_url(_best(_image_set_options(image.group("set")), resolve))
        else:
            raw = image.group("dq") or image.group("sq") or image.group("uq") or ""
            url = resolve(_css_unescape(raw))
        if url is not None:
            yield url


def _root(response: TextResponse) -> etree._Element | None:
    """The parsed page, or None for a response without text or one lxml cannot make a tree of."""
    if not isinstance(response, TextResponse):
        return None
    try:
        root = _html_selector(response).root
    except (ValueError, etree.LxmlError) as exc:
        logger.warning("Cannot parse %s for images: %s", response.url, exc)
        return None
    return root if isinstance(root, etree._Element) else None


def _html_selector(response: TextResponse) -> Selector:
    """The page parsed as HTML: Scrapy's cached selector when it can build one of that type, else our own."""
    selector = _OWN_SELECTORS.get(response)
    if selector is not None:
        return selector
    try:
        selector = response.selector
    except ValueError:
        # Scrapy resolves the page's <base href> as it builds its selector, and with w3lib < 2.6 (which Scrapy
        # 2.19 allows) raises UnicodeEncodeError when the href's query holds a character the page's encoding
        # cannot encode, such as the U+FFFD of a byte the charset leaves undefined. The base is resolved here
        # (_base_url), so the page is parsed without Scrapy's.
        selector = None
    if selector is None or selector.type != "html":
        # An XML response (XHTML sent as text/xml, a feed) is read as HTML too: namespaces and case would
        # otherwise hide its <img>s from the queries.
        selector = Selector(text=response.text, type="html")
        _OWN_SELECTORS[response] = selector
    return selector


def _base_url(root: etree._Element, response: TextResponse) -> str:
    # Not response.urljoin(): Scrapy looks for <base> only in the first 4096 characters of the page.
    hrefs = _BASE_HREF(root)
    if hrefs:
        base = absolute_image_url(hrefs[0], response.url, response.encoding)
        if base is not None:
            return base
    return response.url


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _in_svg(element: etree._Element) -> bool:
    return next(element.iterancestors("svg"), None) is not None


def _alt_text(img: etree._Element) -> str:
    return _normalise(img.get("alt") or "") or _normalise(img.get("title") or "")


def _best_url(choice: tuple[str, _Score] | None) -> str | None:
    return choice[0] if choice is not None else None


def _best(candidates: Iterable[tuple[str, _Score]], resolve: _Resolve) -> tuple[str, _Score] | None:
    """The largest candidate whose URL resolves; the first one wins a tie."""
    best: tuple[str, _Score] | None = None
    for raw, score in candidates:
        if best is not None and score <= best[1]:
            continue  # cannot win: not worth resolving
        url = resolve(raw)
        if url is not None:
            best = (url, score)
    return best


def _choose(
    element: etree._Element,
    tiers: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...],
    resolve: _Resolve,
) -> tuple[str, _Score] | None:
    """The best candidate of an <img> or <source>: the first tier with a usable URL decides, and within a
    tier the largest srcset candidate, else the first usable src."""
    for srcset_attributes, src_attributes in tiers:
        candidates: list[tuple[str, _Score]] = []
        for attribute in srcset_attributes:
            value = _attribute(element, attribute)
            if value:
                candidates.extend(parse_srcset(value))
        best = _best(candidates, resolve)
        if best is not None:
            return best
        for attribute in src_attributes:
            url = resolve(_attribute(element, attribute))
            if url is not None:
                return url, _ONE_X
    return None


def _attribute(element: etree._Element, name: str) -> str:
    """An attribute's value ("" when absent); a lazy-load (data-*) one is "" too when it holds a flag or a
    setting rather than a URL (see _URL_LIKE)."""
    value = element.get(name) or ""
    if name.startswith("data-") and not _URL_LIKE.search(value):
        return ""
    return value


def _link_choice(link: etree._Element, resolve: _Resolve) -> tuple[str, _Score] | None:
    """The image of a <link rel="image_src">, or of a <link rel="preload" as="image"> whose type, if given, is
    decodable: the largest candidate of its imagesrcset (which browsers use over its href), else its href."""
    rel = (link.get("rel") or "").lower().split()
    if "image_src" in rel:
        url = resolve(link.get("href") or "")
        return (url, _ONE_X) if url is not None else None
    if "preload" in rel and (link.get("as") or "").strip().lower() == "image" and _decodable(link.get("type")):
        return _choose(link, _PRELOAD_TIERS, resolve)
    return None


def _lazy_background_urls(element: etree._Element, resolve: _Resolve) -> list[str]:
    """The URLs of an element's lazy background: of the first of data-bgset, data-bg, data-background-image
    that gives any."""
    bgset = _attribute(element, "data-bgset")
    if bgset:
        url = _best_url(_best(_bgset_candidates(bgset), resolve))
        if url is not None:
            return [url]
    for attribute in _LAZY_BACKGROUND_SRC:
        value = _attribute(element, attribute)
        if not value:
            continue
        if _CSS_FUNCTION_START.match(value):
            urls = list(_css_value_image_urls(value, resolve))
        else:
            url = resolve(value)
            urls = [url] if url is not None else []
        if urls:
            return urls
    return []


def _bgset_candidates(value: str) -> Iterator[tuple[str, _Score]]:
    """The srcset candidates of every set of a data-bgset whose type, if given, is decodable (the media
    queries are ignored: every set is some screen's image)."""
    for item in _BGSET_SEPARATOR.split(value):
        options = _BGSET_OPTIONS.search(item)
        if options is not None:
            mime_type = _BGSET_TYPE.search(item, options.start())
            if mime_type and not _decodable(mime_type.group(1)):
                continue
            item = item[: options.start()]
        yield from parse_srcset(item)


def _picture_choice(
    picture: etree._Element, resolve: _Resolve
) -> tuple[tuple[str, _Score] | None, etree._Element | None]:
    """The largest candidate of a <picture>'s sources and <img>, and that <img> (None if it has none).

    lxml's parser does not know <source> is void and nests what follows inside it, so descendants are read,
    up to the first <img> as a browser would.
    """
    choices: list[tuple[str, _Score]] = []
    img = None
    for element in picture.iter("source", "img"):
        if element.tag == "img":
            img = element
            tiers = _IMG_TIERS
        elif _decodable(element.get("type")):
            tiers = _SOURCE_TIERS
        else:
            continue
        choice = _choose(element, tiers, resolve)
        if choice is not None:
            choices.append(choice)
        if img is not None:
            break
    # Already resolved: _best only has to compare.
    return _best(choices, lambda url: url), img


def _decodable(mime_type: str | None) -> bool:
    if mime_type is None:
        return True
    essence = mime_type.split(";", 1)[0].strip().lower()
    return not essence or essence in DECODABLE_TYPES


def _meta_names(meta: etree._Element) -> list[str]:
    names = (name.strip().lower() for name in (meta.get("property"), meta.get("name")) if name)
    return list(dict.fromkeys(names))


def _read_meta(
    meta: etree._Element,
    resolve: _Resolve,
    add: Callable[[str | None, str], None],
    groups: dict[str, list[str]],
    pending_alts: dict[str, str],
) -> None:
    """Add an og:image / twitter:image URL, or give the image before it the alt text of an :alt tag.

    An og:image starts a new image; og:image:url and og:image:secure_url are more URLs of the current one,
    and og:image:alt describes all of them (Open Graph structured properties).
    """
    content = meta.get("content") or ""
    for name in _meta_names(meta):
        family = "og" if name in _OG_IMAGE else "twitter" if name in _TWITTER_IMAGE else None
        if family is not None:
            if name in ("og:image", "twitter:image", "twitter:image:src") or family not in groups:
                groups[family] = []
            url = resolve(content)
            if url is not None:
                groups[family].append(url)
                add(url, pending_alts.pop(family, ""))
        elif name in _IMAGE_ALT:
            family = _IMAGE_ALT[name]
            alt = _normalise(content)
            if family in groups:
                for url in groups[family]:
                    add(url, alt)
            elif alt:
                pending_alts.setdefault(family, alt)


def _descriptor_score(descriptors: list[str]) -> _Score | None:
    """The size a candidate's descriptors give it, or None when the browser would drop the candidate."""
    width: int | None = None
    density: float | None = None
    height: int | None = None
    for descriptor in descriptors:
        number, unit = descriptor[:-1], descriptor[-1:]
        if unit == "w" and width is None and density is None:
            if not _NON_NEGATIVE_INTEGER.match(number) or len(number) > 15:
                return None
            width = int(number)
            if width == 0:
                return None
        elif unit == "x" and width is None and density is None and height is None:
            if not _FLOATING_POINT.match(number):
                return None
            density = float(number)
            if density < 0 or not math.isfinite(density):
                return None
        elif unit == "h" and height is None and density is None:
            if not _NON_NEGATIVE_INTEGER.match(number) or len(number) > 15 or int(number) == 0:
                return None
            height = int(number)
        else:
            return None
    if height is not None and width is None:
        return None
    if width is not None:
        return (1, float(width))
    return (0, 1.0 if density is None else density)


def _image_set_options(body: str) -> Iterator[tuple[str, _Score]]:
    """The (raw URL, density) options of an image-set() whose type, if given, is decodable."""
    for option in _IMAGE_SET_OPTION.finditer(body):
        raw = next((g for g in option.group("dq", "sq", "uq", "ds", "ss") if g is not None), "")
        rest = option.group("rest")
        mime_type = _TYPE_FUNCTION.search(rest)
        if mime_type and not _decodable(mime_type.group(1) or mime_type.group(2) or ""):
            continue
        resolution = _RESOLUTION.search(rest)
        density = 1.0
        if resolution:
            density = float(resolution.group(1)) * _DENSITY_UNITS[resolution.group(2).lower()]
            if not math.isfinite(density):
                continue
        yield _css_unescape(raw), (0, density)


def _css_unescape(value: str) -> str:
    if "\\" not in value:
        return value

    def replace(match: re.Match[str]) -> str:
        if match.group(1):
            code = int(match.group(1), 16)
            valid = 0 < code <= 0x10FFFF and not 0xD800 <= code <= 0xDFFF
            return chr(code) if valid else "\ufffd"
        return match.group(2) or ""  # an escaped newline is a line continuation

    return _CSS_ESCAPE.sub(replace, value)
