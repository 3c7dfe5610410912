"""Malformed and hostile images, one per class, each with the outcome the crawl owes it.

`hostile_images()` returns {name: Hostile}: the bytes, the URL path they are served under (often with a lying
extension), the Content-Type they are served with, and what should become of them: `Indexed(width, height,
format)` with the upright size, or the stats reason (`skipped/not_image`, `failed/decode_error`, ...). Every
image is built here in memory, deterministically; valid ones are distinct pictures (distinct SHA-256).
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from crawler.sample_site import photo_like
from tests.test_imaging import gif_claiming, png_chunks, png_claiming, png_from_chunks

ORIENTATION = 0x0112


@dataclass(frozen=True)
class Indexed:
    width: int
    height: int
    format: str


@dataclass(frozen=True)
class Hostile:
    data: bytes
    path: str
    content_type: str
    expected: Indexed | str  # Indexed, or the stats reason: "skipped/not_image", "failed/decode_error", ...
    what: str


def save(im: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def picture(seed: int, width: int = 240, height: int = 180) -> Image.Image:
    return photo_like(seed, width, height)


def noise(seed: int, width: int, height: int) -> Image.Image:
    """Incompressible pixels, so that a cut lands inside the pixel data."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


def exif(orientation: int) -> Image.Exif:
    tags = Image.Exif()
    tags[ORIENTATION] = orientation
    return tags


def jpeg_cut_after_sos(data: bytes) -> bytes:
    """Everything up to the end of the start-of-scan header: the frame is announced, no pixel follows."""
    sos = data.index(b"\xff\xda")
    (length,) = struct.unpack(">H", data[sos + 2:sos + 4])
    return data[:sos + 2 + length]


def ycck_jpeg(seed: int) -> bytes:
    """A four-component JPEG whose Adobe APP14 marker says YCCK (transform 2) instead of CMYK."""
    data = bytearray(save(picture(seed).convert("CMYK"), "JPEG", quality=90))
    adobe = data.index(b"Adobe")
    # "Adobe", version (2), flags0 (2), flags1 (2), transform (1)
    data[adobe + 11] = 2
    return bytes(data)


def png_rgb16(seed: int, width: int = 160, height: int = 120) -> bytes:
    """A 16-bit-per-channel RGB PNG (colour type 2, depth 16), written by hand: Pillow cannot save one."""
    pixels = (np.asarray(picture(seed, width, height), dtype=np.uint16) * 257).astype(">u2")
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return png_from_chunks([(b"IHDR", ihdr), (b"IDAT", zlib.compress(raw, 9)), (b"IEND", b"")])


def png_ztxt_bomb(seed: int) -> bytes:
    """A valid picture with a zTXt chunk that inflates to 64 MB of text."""
    chunks = png_chunks(save(picture(seed), "PNG"))
    bomb = (b"Comment", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9))
    return png_from_chunks(chunks[:1] + [bomb] + chunks[1:])


def webp_canvas_bomb(seed: int) -> bytes:
    """An extended (VP8X) WebP whose canvas claims 16384 x 16384 over a small bitstream."""
    data = bytearray(save(picture(seed), "WEBP", quality=80, exif=exif(1)))  # EXIF makes it extended (VP8X)
    assert data[12:16] == b"VP8X"
    data[24:27] = (16383).to_bytes(3, "little")
    data[27:30] = (16383).to_bytes(3, "little")
    return bytes(data)


def tiff_claiming(width: int, height: int) -> bytes:
    """A little-endian TIFF whose IFD claims width x height, 8-bit grey, one tiny uncompressed strip."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 0),
               (277, 3, 1), (278, 4, height), (279, 4, 16)]
    ifd_offset = 8
    strip_offset = ifd_offset + 2 + 12 * len(entries) + 4
    ifd = struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        value = strip_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, kind, 1) + packed
    return b"II*\x00" + struct.pack("<I", ifd_offset) + ifd + b"\x00\x00\x00\x00" + bytes(16)


def bmp_claiming(width: int, height: int) -> bytes:
    data = bytearray(save(Image.new("RGB", (4, 4)), "BMP"))
    data[18:26] = struct.pack("<ii", width, height)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    """A JPEG whose SOF0 frame header claims width x height."""
    data = bytearray(save(Image.new("RGB", (16, 16)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_tiny_strip(width: int, height: int) -> bytes:
    return save(Image.new("L", (width, height), 128), "PNG")


def zip_file() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("photo.jpg", save(picture(1), "JPEG"))
    return buffer.getvalue()


PDF = (b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [] /Count 0 >> "
       b"endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n")


def svg_external_entity(target: str) -> bytes:
    return (f'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY xxe SYSTEM "{target}">]>\n'
            f'<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200"><text>&xxe;</text></svg>').encode()


BILLION_LAUGHS = (b'<?xml version="1.0"?>\n<!DOCTYPE svg [<!ENTITY lol "lol">'
                  + b"".join(f'<!ENTITY lol{n} "{("&lol" + str(n - 1) + ";") * 10 if n > 1 else "&lol;" * 10}">'
                             .encode() for n in range(1, 10))
                  + b']>\n<svg xmlns="http://www.w3.org/2000/svg"><text>&lol9;</text></svg>')


def animated(seed: int, fmt: str) -> bytes:
    frames = [picture(seed + n, 200, 150) for n in range(3)]
    if fmt == "GIF":
        frames = [f.convert("P") for f in frames]
    return save(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)


def ico() -> bytes:
    return save(picture(3, 64, 64), "ICO")


def psd() -> bytes:
    return b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 64, 64, 8, 3) + bytes(64)


def eps() -> bytes:
    return save(picture(4, 64, 64), "EPS")


def hostile_images(xxe_target: str) -> dict[str, Hostile]:
    """Every class, keyed by name; `xxe_target` is the URL the SVG's external entity points at."""
    jpeg = save(noise(11, 320, 240), "JPEG", quality=90)
    progressive = save(noise(12, 320, 240), "JPEG", quality=90, progressive=True)
    png = save(noise(13, 200, 150), "PNG")
    gif = save(noise(14, 200, 150).convert("P"), "GIF")
    webp = save(noise(15, 200, 150), "WEBP", quality=90)
    idat_bad_crc = bytearray(png)
    idat_bad_crc[png.index(b"IDAT") + 100] ^= 0xFF
    palette_alpha = picture(40).convert("P")
    avif = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + bytes(64)
    heic = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    zero_ihdr = png_claiming(0, 0)
    tiff_bad_strips = bytearray(save(noise(16, 64, 64), "TIFF"))
    tiff_bad_strips[4:8] = struct.pack("<I", len(tiff_bad_strips) + 1000)  # the IFD is past the end of the file

    D, NI, SVG, TMP, TS, UF = ("failed/decode_error", "skipped/not_image", "skipped/svg", "skipped/too_many_pixels",
                               "skipped/too_small", "skipped/unsupported_format")
    J, P = "image/jpeg", "image/png"
    classes = [
        # Truncated at each format's structural markers.
        ("jpeg_cut_after_sos", jpeg_cut_after_sos(jpeg), ".jpg", J, D, "JPEG cut right after its SOS header"),
        ("jpeg_cut_mid_scan", jpeg[:len(jpeg) // 2], ".jpg", J, D, "JPEG cut in the middle of the scan"),
        ("jpeg_without_eoi", jpeg[:-2], ".jpg", J, D, "JPEG missing only its EOI marker"),
        ("progressive_jpeg_cut", progressive[:len(progressive) // 2], ".jpg", J, D, "progressive JPEG cut in half"),
        ("png_cut_in_idat", png[:png.index(b"IDAT") + 2000], ".png", P, D, "PNG cut inside IDAT"),
        ("png_without_iend", png[:png.rindex(b"IEND") - 4], ".png", P, Indexed(200, 150, "png"),
         "PNG cut before IEND"),
        ("png_idat_bad_crc", bytes(idat_bad_crc), ".png", P, D, "PNG with a corrupt IDAT"),
        ("gif_cut_in_image_data", gif[:len(gif) // 2], ".gif", "image/gif", D, "GIF cut inside its image data"),
        ("gif_without_trailer", gif[:-1], ".gif", "image/gif", Indexed(200, 150, "gif"), "GIF missing its trailer"),
        ("webp_riff_cut", webp[:len(webp) // 2], ".webp", "image/webp", D, "WebP cut in half (RIFF size lies)"),
        ("webp_riff_header_only", webp[:20], ".webp", "image/webp", D, "WebP: the RIFF header alone"),
        # Decompression bombs: refused from the header, before any pixel is decoded.
        ("png_bomb_ihdr", png_claiming(40000, 40000), ".png", P, TMP, "PNG claiming 40000x40000"),
        ("png_bomb_real", save(Image.new("1", (10000, 10000)), "PNG"), ".png", P, TMP,
         "a real 100 MP bilevel PNG (a few KB)"),
        ("gif_bomb", gif_claiming(65535, 65535), ".gif", "image/gif", TMP, "GIF screen 65535x65535"),
        ("webp_bomb", webp_canvas_bomb(41), ".webp", "image/webp", TMP, "WebP VP8X canvas 16384x16384"),
        ("tiff_bomb", tiff_claiming(100000, 100000), ".tif", "image/tiff", TMP, "TIFF claiming 100000x100000"),
        ("bmp_bomb", bmp_claiming(30000, 30000), ".bmp", "image/bmp", TMP, "BMP claiming 30000x30000"),
        ("jpeg_bomb", jpeg_claiming(65000, 65000), ".jpg", J, TMP, "JPEG SOF claiming 65000x65000"),
        # Pillow stops inflating text at 1 MB (ImageFile's MAX_TEXT_CHUNK) and refuses the whole file.
        ("png_ztxt_bomb", png_ztxt_bomb(42), ".png", P, D, "PNG with a zTXt chunk inflating to 64 MB"),
        # Valid, in unusual colour models and depths: indexed with the right size.
        ("cmyk_jpeg", save(picture(43).convert("CMYK"), "JPEG", quality=90), ".jpg", J, Indexed(240, 180, "jpeg"),
         "CMYK JPEG"),
        ("ycck_jpeg", ycck_jpeg(44), ".jpg", J, Indexed(240, 180, "jpeg"), "YCCK JPEG (Adobe transform 2)"),
        ("png_16bit_grey", save(Image.fromarray(np.asarray(picture(45).convert("L"), dtype=np.uint16) * 257),
                                "PNG"), ".png", P, Indexed(240, 180, "png"), "16-bit greyscale PNG"),
        ("png_16bit_rgb", png_rgb16(46), ".png", P, Indexed(160, 120, "png"), "16-bit RGB PNG"),
        ("png_palette_alpha", save(palette_alpha, "PNG", transparency=bytes(range(0, 256))), ".png", P,
         Indexed(240, 180, "png"), "palette PNG with per-entry alpha (tRNS)"),
        # EXIF orientations: indexed upright.
        ("exif_orientation_3", save(picture(47, 400, 300), "JPEG", exif=exif(3)), ".jpg", J,
         Indexed(400, 300, "jpeg"), "JPEG, EXIF orientation 3 (180)"),
        ("exif_orientation_5", save(picture(48, 400, 300), "JPEG", exif=exif(5)), ".jpg", J,
         Indexed(300, 400, "jpeg"), "JPEG, EXIF orientation 5 (transpose)"),
        ("exif_orientation_6", save(picture(49, 400, 300), "JPEG", exif=exif(6)), ".jpg", J,
         Indexed(300, 400, "jpeg"), "JPEG, EXIF orientation 6 (90 cw)"),
        ("exif_orientation_8", save(picture(50, 400, 300), "JPEG", exif=exif(8)), ".jpg", J,
         Indexed(300, 400, "jpeg"), "JPEG, EXIF orientation 8 (90 ccw)"),
        ("exif_orientation_9", save(picture(51, 400, 300), "JPEG", exif=exif(9)), ".jpg", J,
         Indexed(400, 300, "jpeg"), "JPEG, EXIF orientation 9 (out of range)"),
        ("png_exif_orientation_6", save(picture(52, 400, 300), "PNG", exif=exif(6)), ".png", P,
         Indexed(300, 400, "png"), "PNG eXIf orientation 6"),
        ("exif_broken", save(picture(53, 200, 160), "JPEG", exif=b"Exif\x00\x00MM\x00*\xff\xff\xff\xff"), ".jpg",
         J, Indexed(200, 160, "jpeg"), "JPEG with an EXIF IFD offset past its end"),
        # Strips.
        ("strip_1x100000", png_tiny_strip(1, 100000), ".png", P, TS, "PNG 1x100000"),
        ("strip_100000x1", png_tiny_strip(100000, 1), ".png", P, TS, "PNG 100000x1"),
        ("strip_32x65000", save(picture(54, 32, 65000), "JPEG", quality=50), ".jpg", J,
         Indexed(32, 65000, "jpeg"), "JPEG 32x65000 (passes every cap)"),
        # Nothing, or something else under an image's name.
        ("zero_length", b"", ".jpg", J, "failed/empty", "zero bytes"),
        ("png_named_jpg", save(picture(55), "PNG"), ".jpg", J, Indexed(240, 180, "png"), "a PNG named .jpg"),
        ("jpeg_named_gif", save(picture(56), "JPEG"), ".gif", "image/gif", Indexed(240, 180, "jpeg"),
         "a JPEG named .gif, served as image/gif"),
        ("zip_named_jpg", zip_file(), ".jpg", J, NI, "a ZIP archive named .jpg"),
        ("pdf_named_jpg", PDF, ".jpg", J, NI, "a PDF named .jpg"),
        ("html_named_png", b"<!doctype html><title>x</title><p>no</p>", ".png", P, NI, "HTML named .png"),
        ("jpeg_then_zip", save(picture(57), "JPEG") + zip_file(), ".jpg", J, Indexed(240, 180, "jpeg"),
         "a JPEG with a ZIP appended (polyglot)"),
        ("jpeg_magic_then_garbage", b"\xff\xd8\xff" + b"garbage" * 30, ".jpg", J, D, "JPEG magic, then garbage"),
        ("png_zero_size", zero_ihdr, ".png", P, D, "PNG whose IHDR says 0x0"),
        ("tiff_ifd_past_end", bytes(tiff_bad_strips), ".tif", "image/tiff", D, "TIFF whose IFD is past the end"),
        ("avif_ftyp_only", avif, ".avif", "image/avif", D, "AVIF: an ftyp box alone"),
        ("heic_ftyp_only", heic, ".heic", "image/heic", D, "HEIC: an ftyp box alone"),
        # Formats refused before any decoder sees them.
        ("svg_external_entity", svg_external_entity(xxe_target), ".jpg", J, SVG,
         "SVG with an external entity, named .jpg"),
        ("svg_billion_laughs", BILLION_LAUGHS, ".svg", "image/svg+xml", SVG, "SVG billion laughs"),
        ("ico_named_png", ico(), ".png", P, UF, "an ICO named .png"),
        ("psd", psd(), ".psd", "image/vnd.adobe.photoshop", UF, "a PSD"),
        ("eps_named_jpg", eps(), ".jpg", J, UF, "an EPS named .jpg (never handed to Ghostscript)"),
        # Animated: the first frame.
        ("animated_gif", animated(60, "GIF"), ".gif", "image/gif", Indexed(200, 150, "gif"), "animated GIF"),
        ("animated_png", animated(63, "PNG"), ".png", P, Indexed(200, 150, "png"), "animated PNG (APNG)"),
        ("animated_webp", animated(66, "WEBP"), ".webp", "image/webp", Indexed(200, 150, "webp"),
         "animated WebP"),
    ]
    return {name: Hostile(data, f"/hostile/{name}{ext}", ctype, expected, what)
            for name, data, ext, ctype, expected, what in classes}
