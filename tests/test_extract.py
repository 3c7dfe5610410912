"""crawler.extract on in-memory responses: which image URLs a page yields, in which order, with which alt."""

from __future__ import annotations

import pytest
from scrapy.http import HtmlResponse, Response, TextResponse, XmlResponse

from crawler.extract import (
    MAX_URL_CHARS,
    FoundImage,
    absolute_image_url,
    extract_images,
    page_directive_values,
    page_links,
    page_title,
    parse_srcset,
    stylesheet_image_urls,
)

PAGE_URL = "https://site.example/dir/page.html"


def _response(body: str | bytes, url: str = PAGE_URL, encoding: str = "utf-8") -> HtmlResponse:
    return HtmlResponse(url=url, body=body, encoding=encoding)


def _page(body: str, head: str = "") -> HtmlResponse:
    return _response(f"<!DOCTYPE html><html><head>{head}</head><body>{body}</body></html>")


def _urls(response: Response) -> list[str]:
    return [found.image_url for found in extract_images(response)]


# --- <img src> and srcset ---------------------------------------------------------------------------------


def test_img_src_resolved_with_alt():
    found = extract_images(_page('<img src="a.jpg" alt="  A   cat\n sitting "><img src="/b.png">'))
    assert found == [
        FoundImage("https://site.example/dir/a.jpg", "A cat sitting"),
        FoundImage("https://site.example/b.png", ""),
    ]


def test_alt_falls_back_to_title():
    found = extract_images(_page('<img src="a.jpg" title="The title"><img src="b.jpg" alt=" " title="T2">'))
    assert [f.alt_text for f in found] == ["The title", "T2"]


def test_srcset_largest_width_descriptor_and_not_src():
    page = _page('<img src="s.jpg" srcset="m.jpg 640w, xl.jpg 1920w, l.jpg 1280w" sizes="50vw" alt="x">')
    assert extract_images(page) == [FoundImage("https://site.example/dir/xl.jpg", "x")]


def test_srcset_largest_density_descriptor():
    page = _page('<img src="a.jpg" srcset="a-1.5x.jpg 1.5x, a-3x.jpg 3x, a-2x.jpg 2x">')
    assert _urls(page) == ["https://site.example/dir/a-3x.jpg"]


def test_srcset_candidate_without_descriptor_counts_as_1x():
    # The bare candidate is 1x, so the 2x one wins; against a 0.5x candidate the bare one wins.
    assert _urls(_page('<img srcset="plain.jpg, big.jpg 2x">')) == ["https://site.example/dir/big.jpg"]
    assert _urls(_page('<img srcset="half.jpg 0.5x, plain.jpg">')) == ["https://site.example/dir/plain.jpg"]


def test_srcset_width_beats_density():
    page = _page('<img srcset="d.jpg 3x, w.jpg 300w">')
    assert _urls(page) == ["https://site.example/dir/w.jpg"]


def test_srcset_urls_containing_commas():
    page = _page('<img srcset="https://cdn.example/x.jpg?w=1,2 2x, https://cdn.example/y.jpg?a=1,b 1x">')
    assert _urls(page) == ["https://cdn.example/x.jpg?w=1,2"]


def test_parse_srcset_follows_whatwg_rules():
    assert parse_srcset(
        " a.jpg,  b.jpg 2x ,, c.jpg?x=1,2 100w 50h, d,e.jpg 3x, bad.jpg 1x 2x, bad2.jpg 0w, bad3.jpg -1x,"
        " bad4.jpg 10h, (odd) , f.jpg (foo, bar),last.jpg,"
    ) == [
        ("a.jpg", (0, 1.0)),  # a trailing comma on a URL separates candidates
        ("b.jpg", (0, 2.0)),
        ("c.jpg?x=1,2", (1, 100.0)),  # a URL runs up to whitespace, commas included
        ("d,e.jpg", (0, 3.0)),
        ("(odd)", (0, 1.0)),
        ("last.jpg", (0, 1.0)),
    ]
    assert parse_srcset("") == []
    assert parse_srcset(" , ,\n") == []


def test_src_used_when_srcset_has_no_usable_candidate():
    page = _page(
        '<img src="real.jpg" srcset="data:image/gif;base64,R0lGOD 1x, bad.jpg 0w">'
        '<img src="b.jpg" srcset="  ">'
    )
    assert _urls(page) == ["https://site.example/dir/real.jpg", "https://site.example/dir/b.jpg"]


# --- <picture> --------------------------------------------------------------------------------------------


def test_picture_largest_candidate_across_sources_and_img():
    page = _page(
        '<picture>'
        '<source media="(min-width: 800px)" srcset="wide-1200.webp 1200w, wide-2400.webp 2400w"'
        ' type="image/webp">'
        '<source srcset="narrow-600.jpg 600w, narrow-900.jpg 900w">'
        '<img src="fallback.jpg" srcset="fallback-1000.jpg 1000w" alt="Picture alt">'
        '</picture>'
        '<img src="after.jpg">'
    )
    assert extract_images(page) == [
        FoundImage("https://site.example/dir/wide-2400.webp", "Picture alt"),
        FoundImage("https://site.example/dir/after.jpg", ""),
    ]


def test_picture_skips_sources_of_undecodable_types():
    page = _page(
        '<picture>'
        '<source srcset="logo.svg 4x" type="image/svg+xml">'
        '<source srcset="photo.jxl 3000w" type="image/jxl">'
        '<source srcset="photo.webp 1x, photo-2x.webp 2x" type="image/webp; codecs=vp8">'
        '<img src="photo.jpg" alt="p">'
        '</picture>'
    )
    assert extract_images(page) == [FoundImage("https://site.example/dir/photo-2x.webp", "p")]


def test_picture_takes_avif_and_heic_sources_which_the_fetch_stage_decodes():
    page = _page(
        '<picture><source srcset="big.avif 2x" type="image/avif"><img src="small.jpg" alt="a"></picture>'
        '<picture><source srcset="big.heic 2x" type="image/heic"><img src="small.png"></picture>'
    )
    assert _urls(page) == ["https://site.example/dir/big.avif", "https://site.example/dir/big.heic"]


def test_picture_falls_back_to_img():
    page = _page('<picture><source srcset="a.svg" type="image/svg+xml"><img src="a.png"></picture>')
    assert _urls(page) == ["https://site.example/dir/a.png"]


def test_picture_with_lazy_sources():
    page = _page(
        '<picture>'
        '<source srcset="data:image/gif;base64,R0lGOD" data-srcset="lazy-800.jpg 800w, lazy-1600.jpg 1600w">'
        '<img src="data:image/gif;base64,R0lGOD" data-src="lazy.jpg" alt="lazy"></picture>'
    )
    assert extract_images(page) == [FoundImage("https://site.example/dir/lazy-1600.jpg", "lazy")]


def test_unclosed_picture_does_not_swallow_later_images():
    page = _page('<picture><source srcset="a.jpg 2x"><img src="b.jpg"><p>text<img src="c.jpg" alt="c">')
    assert _urls(page) == ["https://site.example/dir/a.jpg", "https://site.example/dir/c.jpg"]


# --- lazy loading -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "attribute", ["data-src", "data-lazy-src", "data-original", "data-lazy", "data-lazyload", "data-orig-src"]
)
def test_lazy_src_attribute_beats_data_uri_placeholder(attribute):
    page = _page(f'<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" {attribute}="real.jpg" alt="r">')
    assert extract_images(page) == [FoundImage("https://site.example/dir/real.jpg", "r")]


def test_lazy_src_attribute_beats_tiny_gif_placeholder():
    page = _page('<img src="/img/blank.gif" data-src="https://cdn.example/photo.jpg">')
    assert _urls(page) == ["https://cdn.example/photo.jpg"]


@pytest.mark.parametrize("attribute", ["data-srcset", "data-lazy-srcset", "data-original-set"])
def test_lazy_srcset_largest_candidate(attribute):
    page = _page(
        f'<img src="placeholder.gif" srcset="placeholder.gif 1x" data-src="mid.jpg"'
        f' {attribute}="small.jpg 300w, large.jpg 1200w, mid.jpg 600w">'
    )
    assert _urls(page) == ["https://site.example/dir/large.jpg"]


def test_lazy_attribute_without_usable_url_falls_back_to_native():
    page = _page('<img src="real.jpg" data-src="javascript:void(0)" data-srcset=" ">')
    assert _urls(page) == ["https://site.example/dir/real.jpg"]


@pytest.mark.parametrize(
    "attributes", ['data-lazy="true"', 'data-lazyload="1"', 'data-src="lazy" data-srcset="yes"', 'data-lazy=""']
)
def test_lazy_attribute_used_as_a_flag_is_no_url(attributes):
    page = _page(f'<img src="real.jpg" {attributes} alt="r">')
    assert extract_images(page) == [FoundImage("https://site.example/dir/real.jpg", "r")]


def test_image_tag_outside_svg_is_an_img():
    # The HTML parser renames <image> to <img> outside foreign content; lxml keeps the name.
    page = _page('<image src="data:," data-src="lazy.jpg" alt="Image tag"><image href="not-an-img.jpg">')
    assert extract_images(page) == [FoundImage("https://site.example/dir/lazy.jpg", "Image tag")]


# --- meta and link tags ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag",
    [
        '<meta property="og:image" content="/og.jpg">',
        '<meta property="og:image:url" content="/og.jpg">',
        '<meta property="og:image:secure_url" content="/og.jpg">',
        '<meta name="twitter:image" content="/og.jpg">',
        '<meta name="twitter:image:src" content="/og.jpg">',
        '<meta name="og:image" content="/og.jpg">',
        '<meta property="OG:Image" content=" /og.jpg ">',
    ],
)
def test_meta_image_tags(tag):
    assert _urls(_page("", head=tag)) == ["https://site.example/og.jpg"]


def test_meta_image_alt_texts():
    head = (
        '<meta property="og:image" content="https://cdn.example/one.jpg">'
        '<meta property="og:image:secure_url" content="https://cdn.example/one-secure.jpg">'
        '<meta property="og:image:alt" content=" First   image ">'
        '<meta property="og:image" content="https://cdn.example/two.jpg">'
        '<meta property="og:image:alt" content="Second image">'
        '<meta name="twitter:image:alt" content="Tweet alt">'
        '<meta name="twitter:image" content="https://cdn.example/tw.jpg">'
        '<meta property="og:title" content="not an image">'
    )
    assert extract_images(_page("", head=head)) == [
        FoundImage("https://cdn.example/one.jpg", "First image"),
        FoundImage("https://cdn.example/one-secure.jpg", "First image"),
        FoundImage("https://cdn.example/two.jpg", "Second image"),
        FoundImage("https://cdn.example/tw.jpg", "Tweet alt"),
    ]


def test_link_rel_image_src():
    head = (
        '<link rel="stylesheet" href="s.css"><link rel="Image_Src" href="thumb.jpg">'
        '<link rel="icon" href="f.ico">'
    )
    assert _urls(_page("", head=head)) == ["https://site.example/dir/thumb.jpg"]


def test_link_rel_preload_as_image():
    head = (
        '<link rel="preload" as="image" href="hero-800.jpg"'
        ' imagesrcset="hero-800.jpg 800w, hero-1600.jpg 1600w, hero-1200.jpg 1200w" imagesizes="100vw">'
        '<link rel="Preload" as=" IMAGE " href="/plain.jpg">'
        '<link rel="preload" as="image" imagesrcset="no-href-1x.png, no-href-2x.png 2x">'
        '<link rel="preload" as="image" href="bad-set.jpg" imagesrcset="data:image/png;base64,AAAA 2x">'
        '<link rel="preload" as="image" type="image/jxl" href="undecodable.jxl">'
        '<link rel="preload" as="font" href="font.jpg"><link rel="preload" href="no-as.jpg">'
        '<link rel="prefetch" as="image" href="prefetch.jpg">'
    )
    assert _urls(_page("", head=head)) == [
        "https://site.example/dir/hero-1600.jpg",
        "https://site.example/plain.jpg",
        "https://site.example/dir/no-href-2x.png",
        "https://site.example/dir/bad-set.jpg",
    ]


# --- <video poster> and inline SVG ------------------------------------------------------------------------


def test_video_poster():
    page = _page(
        '<video poster="poster.jpg" src="clip.mp4"><source src="clip.webm"></video>'
        '<video poster="data:image/png;base64,AAAA"></video><video poster=""></video>'
        '<video src="no-poster.mp4"></video><audio poster="audio.jpg"></audio>'
    )
    assert extract_images(page) == [FoundImage("https://site.example/dir/poster.jpg", "")]


def test_svg_image_href_and_xlink_href():
    page = _page(
        '<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" viewBox="0 0 9 9">'
        '<image href="svg2.png" width="9"/>'
        '<g><image xlink:href="/legacy.jpg"/></g>'
        '<image XLINK:HREF="upper.jpg"/>'
        '<image href="wins.jpg" xlink:href="loses.jpg"/>'
        '<image xlink:href="data:image/png;base64,AAAA"/>'
        '<image src="src-is-no-svg-attribute.jpg"/>'
        '</svg>'
    )
    assert _urls(page) == [
        "https://site.example/dir/svg2.png",
        "https://site.example/legacy.jpg",
        "https://site.example/dir/upper.jpg",
        "https://site.example/dir/wins.jpg",
    ]


# --- inline styles ----------------------------------------------------------------------------------------


def test_background_image_quoted_unquoted_and_multiple():
    page = _page(
        '<div style="background-image: url(&quot;dq.jpg&quot;)"></div>'
        "<div style=\"background-image:url('sq.jpg')\"></div>"
        '<section style="color: red; BACKGROUND: #fff url( unquoted.png ) no-repeat center / cover">'
        '</section>'
        '<div style="background-image: url(layer1.png), linear-gradient(red, blue), url(\'layer2.png\')">'
        '</div>'
        '<span style="background: url(data:image/png;base64,iVBORw0K;x=1) ;'
        ' background-image: url(after-data.jpg)"></span>'
    )
    assert _urls(page) == [
        "https://site.example/dir/dq.jpg",
        "https://site.example/dir/sq.jpg",
        "https://site.example/dir/unquoted.png",
        "https://site.example/dir/layer1.png",
        "https://site.example/dir/layer2.png",
        "https://site.example/dir/after-data.jpg",
    ]


def test_background_image_set_takes_largest_decodable_option():
    page = _page(
        '<div style="background-image: -webkit-image-set(url(a-1x.jpg) 1x, url(\'a-2x.jpg\') 2x)"></div>'
        '<div style="background-image: image-set(&quot;b.jxl&quot; type(&quot;image/jxl&quot;) 3x,'
        ' &quot;b-hd.webp&quot; 192dpi, &quot;b.jpg&quot; 1x)"></div>'
    )
    assert _urls(page) == ["https://site.example/dir/a-2x.jpg", "https://site.example/dir/b-hd.webp"]


def test_only_background_declarations_count():
    page = _page(
        '<div style="mask-image: url(mask.png); list-style-image: url(dot.png); --bg: url(var.png);'
        ' content: \'background: url(fake.png)\'"></div>'
        '<div style="/* c */ background-image: url(commented-name.jpg)"></div>'
        '<p style="background-image: url(\'esc\\(1\\).jpg\')">'
    )
    assert _urls(page) == [
        "https://site.example/dir/commented-name.jpg",
        "https://site.example/dir/esc(1).jpg",
    ]


# --- lazy backgrounds -------------------------------------------------------------------------------------


@pytest.mark.parametrize("attribute", ["data-bg", "data-background-image"])
def test_lazy_background_url_or_css_value(attribute):
    page = _page(
        f'<div {attribute}="plain.jpg"></div>'
        f'<div {attribute}="url(&quot;quoted.jpg&quot;)"></div>'
        f'<div {attribute}=" url(one.png), linear-gradient(red, blue), url(\'two.png\')"></div>'
        f'<div {attribute}="image-set(url(set-1x.jpg) 1x, url(set-2x.jpg) 2x)"></div>'
        f'<div {attribute}="https://cdn.example/File:A_(b).jpg"></div>'
        f'<div {attribute}="rgba(0, 0, 0, .5)"></div>'
        f'<div {attribute}="data:image/gif;base64,R0lGODlhAQABAAAAACw="></div>'
    )
    assert _urls(page) == [
        "https://site.example/dir/plain.jpg",
        "https://site.example/dir/quoted.jpg",
        "https://site.example/dir/one.png",
        "https://site.example/dir/two.png",
        "https://site.example/dir/set-2x.jpg",
        "https://cdn.example/File:A_(b).jpg",
    ]


def test_lazy_background_replaces_the_inline_placeholder_but_not_a_flag():
    page = _page(
        '<div style="background-image: url(lqip.jpg)" data-bg="real.jpg"></div>'
        '<section data-bg="dark" style="background: url(section.jpg)"></section>'
        '<div data-bg="javascript:void(0)" style="background: url(fallback.jpg)"></div>'
        '<div data-bg="first.jpg" data-background-image="second.jpg"></div>'
    )
    assert _urls(page) == [
        "https://site.example/dir/real.jpg",
        "https://site.example/dir/section.jpg",
        "https://site.example/dir/fallback.jpg",
        "https://site.example/dir/first.jpg",
    ]


def test_lazy_bgset_takes_the_largest_candidate_of_all_sets():
    page = _page(
        '<div class="lazyload" data-sizes="auto" style="background-image: url(lqip.jpg)"'
        ' data-bgset="a-200.jpg 200w, a-900.jpg 900w [(max-width: 700px)] | b-1600.jxl 1600w [type: image/jxl]'
        ' | b-1200.webp 1200w [--medium] [(type: image/webp)] |c-600.jpg 600w" data-bg="ignored.jpg"></div>'
        '<div data-bgset="x.jpg?a=1|big.jpg 3x | x-2x.jpg 2x"></div>'  # a '|' inside a URL splits nothing
        '<div data-bgset="data:image/gif;base64,R0lGOD 3x" data-bg="bg-fallback.jpg"></div>'
    )
    assert _urls(page) == [
        "https://site.example/dir/b-1200.webp",
        "https://site.example/dir/x.jpg?a=1%7Cbig.jpg",
        "https://site.example/dir/bg-fallback.jpg",
    ]


def test_lazy_background_resolves_against_base_href():
    page = _page(
        '<div data-bg="bg.jpg"></div><p data-bgset="set.jpg 2x"></p>',
        head='<base href="https://static.example/assets/">',
    )
    assert _urls(page) == ["https://static.example/assets/bg.jpg", "https://static.example/assets/set.jpg"]


# --- <style> elements -------------------------------------------------------------------------------------


def test_style_element_background_rules():
    head = (
        "<style>"
        "/* .old { background-image: url(commented.jpg) } */"
        ".hero{background-image:url(hero.jpg)}\n"
        "@media (min-width: 800px) { .hero { color: red; BACKGROUND: #000 url('hero-wide.jpg') no-repeat } }\n"
        "@supports (background: url(prelude.jpg)) { .x { background-image: image-set(url(s-1x.png) 1x,"
        " url(s-2x.png) 2x) } }\n"
        ".q::after { content: \"}\"; background: url(after-quoted-brace.jpg) }\n"
        ".quote-\\' { background: url(after-escaped-quote.jpg) }\n"
        ".card { background-image: url(nested-outer.jpg); &:hover { background: url(nested-inner.jpg) } }\n"
        ".other { list-style-image: url(dot.png); mask: url(mask.svg); --bg: url(var.jpg) }\n"
        "@font-face { font-family: f; src: url(font.woff2) }\n"
        ".data { background: url(data:image/png;base64,AAAA) }"
        "</style>"
    )
    assert _urls(_page("", head=head)) == [
        "https://site.example/dir/hero.jpg",
        "https://site.example/dir/hero-wide.jpg",
        "https://site.example/dir/s-2x.png",
        "https://site.example/dir/after-quoted-brace.jpg",
        "https://site.example/dir/after-escaped-quote.jpg",
        "https://site.example/dir/nested-outer.jpg",
        "https://site.example/dir/nested-inner.jpg",
    ]


def test_style_element_unbalanced_braces():
    # A block still open at the end is closed there; a stray '}' closes nothing.
    assert _urls(_page("<style>} .a { background: url(open.jpg)</style>")) == ["https://site.example/dir/open.jpg"]
    assert _urls(_page("<style>background: url(no-block.jpg)</style>")) == []


def test_style_element_urls_come_in_its_place_and_resolve_against_base_href():
    page = _page(
        '<img src="before.jpg"><style>.b { background: url(sheet.jpg) }</style><img src="after.jpg">'
        '<svg><style>.s { background-image: url(svg-sheet.png) }</style></svg>',
        head='<base href="https://static.example/css/">',
    )
    assert _urls(page) == [
        "https://static.example/css/before.jpg",
        "https://static.example/css/sheet.jpg",
        "https://static.example/css/after.jpg",
        "https://static.example/css/svg-sheet.png",
    ]


def test_stylesheet_image_urls_on_hostile_input():
    # Each of these takes well under a second; a backtracking parser would take hours on some.
    def resolve(raw: str) -> str | None:
        return absolute_image_url(raw, PAGE_URL)

    hostile = [
        "{" * 200_000,
        "}" * 200_000,
        "{" + "url(" * 50_000,
        "{background:" + "url(" * 50_000,
        "{background-image:" + "image-set(" * 40_000,
        "{background:url('" + "\\" * 200_000,
        ".a{background:" + " " * 200_000 + "url(",
        "/*" * 100_000 + "{background:url(x.jpg)}",
        "{;" * 100_000,
        "{a" + '"' * 200_000,
        "{background:url(" + "{}(" * 70_000,
    ]
    for css in hostile:
        assert len(css) >= 200_000
        assert stylesheet_image_urls(css, resolve) == []
    mixed = "{background:url(a.jpg)" + "{" * 100_000 + "url(" * 25_000
    assert stylesheet_image_urls(mixed, resolve) == ["https://site.example/dir/a.jpg"]
    page = _page(f"<style>{hostile[3]}</style><style>{hostile[10]}</style><style>{mixed}</style><img src=b.jpg>")
    assert _urls(page) == ["https://site.example/dir/a.jpg", "https://site.example/dir/b.jpg"]


def test_style_on_an_img_counts_too():
    page = _page('<img src="a.jpg" alt="a" style="background-image: url(bg.jpg)">')
    assert extract_images(page) == [
        FoundImage("https://site.example/dir/a.jpg", "a"),
        FoundImage("https://site.example/dir/bg.jpg", ""),
    ]


# --- URL resolution ---------------------------------------------------------------------------------------


def test_base_href():
    page = _page(
        '<img src="rel.jpg"><img src="/root.jpg"><div style="background: url(bg.png)"></div>',
        head='<base href="https://static.example/assets/"><base href="https://ignored.example/">',
    )
    assert _urls(page) == [
        "https://static.example/assets/rel.jpg",
        "https://static.example/root.jpg",
        "https://static.example/assets/bg.png",
    ]


def test_relative_base_href_resolves_against_the_page():
    page = _page('<img src="x.jpg">', head='<base href="../img/">')
    assert _urls(page) == ["https://site.example/img/x.jpg"]


def test_base_href_after_4096_characters():
    # Scrapy's response.urljoin() honours <base>, but only within the first 4096 characters of the page.
    head = f"<style>{'p{}' * 2000}</style><base href=\"https://static.example/late/\">"
    page = _page('<img src="x.jpg">', head=head)
    assert _urls(page) == ["https://static.example/late/x.jpg"]
    early = _page("", head='<base href="https://static.example/">')
    assert early.urljoin("x.jpg") == "https://static.example/x.jpg"
    assert page.urljoin("x.jpg") == "https://site.example/dir/x.jpg"


def test_invalid_or_empty_base_href_is_ignored():
    for base in ('<base href="javascript:x">', '<base href="">', "<base href>", '<base target="_top">'):
        assert _urls(_page('<img src="x.jpg">', head=base)) == ["https://site.example/dir/x.jpg"]


def test_relative_and_protocol_relative_urls():
    page = _response(
        '<img src="a.jpg"><img src="../up.jpg"><img src="/abs.jpg"><img src="?q=1">'
        '<img src="//cdn.example/x.jpg"><img src="HTTPS://Other.Example/y.jpg">',
        url="http://site.example/dir/page.html",
    )
    assert _urls(page) == [
        "http://site.example/dir/a.jpg",
        "http://site.example/up.jpg",
        "http://site.example/abs.jpg",
        "http://site.example/dir/page.html?q=1",
        "http://cdn.example/x.jpg",
        "https://other.example/y.jpg",
    ]


def test_fragments_stripped_and_deduplicated():
    page = _page('<img src="a.jpg#frag" alt=""><img src="a.jpg#other" alt="second"><img src="b.svg#icon">')
    assert extract_images(page) == [
        FoundImage("https://site.example/dir/a.jpg", "second"),
        FoundImage("https://site.example/dir/b.svg", ""),
    ]


def test_whitespace_and_encoded_newlines_in_attributes():
    page = _page(
        '<img src="  \n https://cdn.example/a.jpg \t">'
        '<img src="https://cdn.example/long&#10;/path&#13;&#10;/b.jpg">'
        '<img src="with space.jpg">'
    )
    assert _urls(page) == [
        "https://cdn.example/a.jpg",
        "https://cdn.example/long/path/b.jpg",
        "https://site.example/dir/with%20space.jpg",
    ]


def test_non_ascii_urls_are_made_safe():
    page = _page('<img src="/fotos/café.jpg?t=é"><img src="https://bücher.example/b.jpg">')
    assert _urls(page) == [
        "https://site.example/fotos/caf%C3%A9.jpg?t=%C3%A9",
        "https://xn--bcher-kva.example/b.jpg",
    ]


@pytest.mark.parametrize(
    "value",
    [
        "data:image/png;base64,iVBORw0KGgo=",
        " DATA:image/gif;base64,R0lG",
        "javascript:alert(1)",
        "blob:https://site.example/1234-5678",
        "about:blank",
        "mailto:a@b.example",
        "ftp://files.example/a.jpg",
        "file:///etc/passwd",
        "",
        "   ",
        "#",
        "#top",
        "http://",
        "http://[::1/a.jpg",
    ],
)
def test_unusable_urls_are_skipped(value):
    page = _page(
        f'<img src="{value}"><img srcset="{value}"><div style="background-image: url(\'{value}\')"></div>',
        head=f'<meta property="og:image" content="{value}"><link rel="image_src" href="{value}">',
    )
    assert extract_images(page) == []


def test_no_filtering_by_extension():
    page = _page('<img src="a.svg"><img src="b.php?id=3"><img src="c"><img src="d.ico">')
    assert _urls(page) == [
        "https://site.example/dir/a.svg",
        "https://site.example/dir/b.php?id=3",
        "https://site.example/dir/c",
        "https://site.example/dir/d.ico",
    ]


def test_absolute_image_url():
    assert absolute_image_url(" x.jpg#f ", "https://a.example/p/") == "https://a.example/p/x.jpg"
    assert absolute_image_url("//b.example/y.png", "http://a.example/") == "http://b.example/y.png"
    assert absolute_image_url("data:,x", "https://a.example/") is None
    assert absolute_image_url("x.jpg", "file:///tmp/") is None
    assert absolute_image_url("/" + "a" * MAX_URL_CHARS, "https://a.example/") is None


# --- de-duplication and order -----------------------------------------------------------------------------


def test_dedupe_across_img_and_og_image_keeps_first_position_and_later_alt():
    page = _page(
        '<img src="https://cdn.example/hero.jpg" alt="Hero"><img src="other.jpg" alt="Other">'
        '<img src="/dir/other.jpg" alt="Later alt">',
        head='<meta property="og:image" content="https://cdn.example/hero.jpg">',
    )
    assert extract_images(page) == [
        FoundImage("https://cdn.example/hero.jpg", "Hero"),
        FoundImage("https://site.example/dir/other.jpg", "Other"),
    ]


def test_document_order():
    page = _page(
        '<div style="background: url(1-bg.jpg)"><img src="2-img.jpg"></div>'
        '<picture><source srcset="3-picture.webp" type="image/webp"><img src="3-fallback.jpg"></picture>'
        '<img data-src="4-lazy.jpg" src="data:,">'
        '<noscript><img src="5-noscript.jpg"></noscript>'
        '<link rel="image_src" href="6-link.jpg">'
        '<meta property="og:image" content="7-og-in-body.jpg">'
        '<video poster="8-poster.jpg"></video>'
        '<div data-bg="9-lazy-bg.jpg"><svg><image href="10-svg.png"/></svg></div>'
        '<style>.a { background: url(11-style.jpg) }</style>'
        '<link rel="preload" as="image" href="12-preload.jpg">',
        head='<meta property="og:image" content="0-og.jpg">',
    )
    assert _urls(page) == [
        "https://site.example/dir/0-og.jpg",
        "https://site.example/dir/1-bg.jpg",
        "https://site.example/dir/2-img.jpg",
        "https://site.example/dir/3-picture.webp",
        "https://site.example/dir/4-lazy.jpg",
        "https://site.example/dir/5-noscript.jpg",
        "https://site.example/dir/6-link.jpg",
        "https://site.example/dir/7-og-in-body.jpg",
        "https://site.example/dir/8-poster.jpg",
        "https://site.example/dir/9-lazy-bg.jpg",
        "https://site.example/dir/10-svg.png",
        "https://site.example/dir/11-style.jpg",
        "https://site.example/dir/12-preload.jpg",
    ]


# --- robustness -------------------------------------------------------------------------------------------


def test_malformed_html():
    body = (
        b'<html><head><title>Broken</title><body><div><p><img src="a.jpg" alt="a"<img src=b.jpg>'
        b"<table><tr><td><img src='c.jpg'></div></span></td></td></table></table>"
        b"<img src=\"d.jpg\" \x00 \xff\xfe"
        b"garbage <<<>>><img <img src=\"e.jpg\"><!-- <img src=\"commented.jpg\"> -->"
        b"<img src = f.jpg alt = 'f' ><img src=\"g.jpg"
    )
    assert _urls(_response(body)) == [
        "https://site.example/dir/a.jpg",
        "https://site.example/dir/c.jpg",
        "https://site.example/dir/d.jpg",
        "https://site.example/dir/e.jpg",
        "https://site.example/dir/f.jpg",
    ]


@pytest.mark.parametrize("body", [b"", b"   ", b"<html></html>", b"<!-- only a comment -->"])
def test_empty_pages(body):
    assert extract_images(_response(body)) == []
    assert page_title(_response(body)) == ""


def test_non_html_text_responses():
    for body in (b"plain text, no markup", b'{"image": "a.jpg", "n": [1, 2]}', b"\x00\x01\x02binary-ish"):
        assert extract_images(TextResponse(url=PAGE_URL, body=body, encoding="utf-8")) == []
    xml = XmlResponse(
        url=PAGE_URL,
        body=b'<?xml version="1.0"?><html xmlns="http://www.w3.org/1999/xhtml">'
        b'<body><img src="x.jpg"/></body></html>',
    )
    assert _urls(xml) == ["https://site.example/dir/x.jpg"]
    feed = XmlResponse(url=PAGE_URL, body=b'<?xml version="1.0"?><rss><channel><item>unclosed')
    assert extract_images(feed) == []


def test_non_text_response():
    response = Response(url=PAGE_URL, body=b'<img src="a.jpg">')
    assert extract_images(response) == []
    assert page_title(response) == ""


def test_broken_encoding():
    body = (
        b'<html><head><meta charset="utf-8"></head>'
        b'<body>\xff\xfe\xc3<img src="a.jpg" alt="caf\xe9 \xc3\xa9"></body>'
    )
    assert extract_images(_response(body)) == [FoundImage("https://site.example/dir/a.jpg", "caf\ufffd é")]


def test_windows_1252_page():
    body = (
        '<html><head><meta charset="windows-1252"><title>Caf\u00e9 \u2013 menu</title></head>'
        '<body><img src="caf\u00e9.jpg?n=\u00e9" alt="Cr\u00e8me br\u00fbl\u00e9e \u20ac5"></body></html>'
    ).encode("cp1252")
    response = HtmlResponse(url=PAGE_URL, body=body)
    assert response.encoding == "cp1252"
    assert extract_images(response) == [
        # The path is UTF-8 encoded, the query in the page's encoding, as browsers do.
        FoundImage("https://site.example/dir/caf%C3%A9.jpg?n=%E9", "Cr\u00e8me br\u00fbl\u00e9e \u20ac5"),
    ]
    assert page_title(response) == "Caf\u00e9 \u2013 menu"


def test_query_characters_outside_the_page_encoding_are_sent_as_utf8():
    # The page can only carry the character as a reference; the URL then falls back to UTF-8 as a whole.
    page = '<meta charset="windows-1252"><img src="a.jpg?q=\u00e9\u4e2d">'
    response = HtmlResponse(url=PAGE_URL, body=page.encode("cp1252", "xmlcharrefreplace"))
    assert _urls(response) == ["https://site.example/dir/a.jpg?q=%C3%A9%E4%B8%AD"]


@pytest.mark.parametrize("query", [b"\x81", b"&#x4e2d;"], ids=["undefined-byte", "character-reference"])
def test_a_base_href_the_page_encoding_cannot_encode_still_yields_images_and_links(query, caplog):
    # Byte 0x81 is undefined in windows-1252 for some decoders (U+FFFD), and U+4E2D has no windows-1252 byte:
    # a base URL's query that the page's encoding cannot carry, found by the fuzzer.
    body = (b'<html><head><title>Base</title><meta name="robots" content="noimageindex">'
            b'<base href="/g/?ref=' + query + b'"></head><body><img src="a.jpg" alt="caf\xe9">'
            b'<a href="next.html">n</a><a href="q?x=' + query + b'">q</a></body></html>')
    response = HtmlResponse(url=PAGE_URL, body=body, headers={"Content-Type": "text/html; charset=windows-1252"})
    assert extract_images(response) == [FoundImage("https://site.example/g/a.jpg", "caf\u00e9")]
    links = page_links(response)
    assert links[0] == "https://site.example/g/next.html"
    assert len(links) == 2 and links[1].startswith("https://site.example/g/q?x=%")
    assert page_title(response) == "Base"
    assert page_directive_values(response, "imgsearch") == ["noimageindex"]
    assert "Cannot parse" not in caplog.text


def test_huge_attribute_values_are_skipped():
    data_uri = "data:image/png;base64," + "A" * 5_000_000
    long_url = "https://cdn.example/" + "a" * 20_000 + ".jpg"
    body = (
        f'<img src="{data_uri}"><img src="{long_url}"><img srcset="{data_uri} 1x, {data_uri} 2x">'
        f'<div style="background-image: url(\'{data_uri}\'), url(ok.jpg)"></div>'
        f'<img src="small.jpg" alt="{"x" * 1_000_000}">'
        f"<div style=\"background: {'(' * 100_000}\"></div>"
        f'<img srcset="{"a.jpg (" * 50_000}">'
    )
    found = extract_images(_page(body))  # how fast: bench/extract.py
    assert [f.image_url for f in found] == [
        "https://site.example/dir/ok.jpg",
        "https://site.example/dir/small.jpg",
    ]
    assert found[1].alt_text == "x" * 1_000_000


# --- page_title -------------------------------------------------------------------------------------------


def test_page_title():
    assert page_title(_page("", head="<title>\n  The   page\ttitle </title>")) == "The page title"
    assert page_title(_page("", head='<meta property="og:title" content=" OG  title ">')) == "OG title"
    assert page_title(_page("", head='<title> </title><meta property="og:title" content="OG">')) == "OG"
    assert page_title(_page('<svg><title>icon</title></svg>')) == ""
    assert page_title(_page("<p>no title</p>")) == ""


# --- page_links -------------------------------------------------------------------------------------------


def test_page_links_in_document_order_each_once():
    body = (
        '<a href="b.html">b</a><map><area href="/area.html"></map><a href="b.html#again">b</a>'
        '<a href="https://other.example/x?q=1">x</a><a href=" \n c.html\t">c</a><a>no href</a>'
        '<link rel="next" href="not-a-link.html"><img src="not-a-link.jpg">'
    )
    assert page_links(_page(body)) == [
        "https://site.example/dir/b.html",
        "https://site.example/area.html",
        "https://other.example/x?q=1",
        "https://site.example/dir/c.html",
    ]


def test_page_links_skip_what_is_no_http_url():
    body = ('<a href="#top">t</a><a href="mailto:a@b.example">m</a><a href="javascript:void(0)">j</a>'
            '<a href="ftp://files.example/">f</a><a href="">e</a><a href="http://[::1">bad</a><a href="ok.html">ok</a>')
    assert page_links(_page(body)) == ["https://site.example/dir/ok.html"]


def test_page_links_resolve_against_a_base_href_anywhere_in_the_page():
    head = f"<style>{'p{}' * 2000}</style><base href=\"https://static.example/late/\">"
    assert page_links(_page('<a href="x.html">x</a>', head=head)) == ["https://static.example/late/x.html"]


def test_page_links_of_what_is_no_page():
    assert page_links(Response(url=PAGE_URL, body=b'<a href="a.html">')) == []
    assert page_links(_response(b"")) == []


def test_lazy_settings_that_look_like_numbers_or_json_are_not_urls():
    page = _page(
        '<img src="a.jpg" data-lazy="0.5"><img src="b.jpg" data-lazyload=\'{"threshold": 0.5}\'>'
        '<div style="background-image: url(c.jpg)" data-bg="0.6"></div>'
        '<div style="background: url(d.png)" data-bg="bg-dark.section"></div>'
        '<img src="e.gif" data-lazy="photo.webp"><img src="f.gif" data-src="//cdn.example/g">'
    )
    assert _urls(page) == ["https://site.example/dir/a.jpg", "https://site.example/dir/b.jpg",
                           "https://site.example/dir/c.jpg", "https://site.example/dir/d.png",
                           "https://site.example/dir/photo.webp", "https://cdn.example/g"]


def test_a_brace_inside_an_unquoted_url_in_a_stylesheet():
    page = _page('<style>.a{background:url(/x{1}.jpg)} .b{background-image:URL("/q{.jpg")}</style>')
    assert _urls(page) == ["https://site.example/x%7B1%7D.jpg", "https://site.example/q%7B.jpg"]


def test_escaped_parentheses_in_unquoted_css_urls():
    page = _page(r'<div style="background-image: url(/a\(1\).jpg)"></div>'
                 r'<style>.x{background:url(/b\(2\).jpg)}</style>')
    assert _urls(page) == ["https://site.example/a(1).jpg", "https://site.example/b(2).jpg"]


def test_a_lazy_background_name_with_parentheses_is_a_url_not_a_css_function():
    page = _page('<div data-bg="IMG_1(1).jpg"></div><div data-bg="url(/c.jpg)"></div>'
                 '<div data-bg="linear-gradient(red, blue)" style="background: url(/d.jpg)"></div>')
    assert _urls(page) == ["https://site.example/dir/IMG_1(1).jpg", "https://site.example/c.jpg",
                           "https://site.example/d.jpg"]
