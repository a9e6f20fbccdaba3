"""Image bytes → an RGB Pillow image, safely.

Order of checks, cheapest first: byte count, format from the magic bytes, the
pixel count read from the header (before any pixel is decoded), then the decode
itself. JPEGs are decoded in the DCT domain at 1/2, 1/4 or 1/8 scale when the
model needs far fewer pixels (draft mode), which is several times faster.
Any failure becomes an ImageError with a stable code; nothing escapes.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps

from model_worker.image.sniff import sniff
from wakeru.protocol import ErrorCode

# A truncated file is an error, not a half-grey picture.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns about odd input (corrupt EXIF, large dimensions); hostile uploads make
# that noise, and our own checks decide. Set once for the process: catch_warnings is
# not thread-safe and decoding runs in a thread pool.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.")

_WHITE = (255, 255, 255)

# Structure limits, checked on the raw bytes before Pillow parses anything. Pillow walks
# JPEG markers and PNG chunks in Python and libjpeg decodes every progressive scan over
# the whole image, so a small file with millions of markers or thousands of scans would
# hold a decode thread for seconds to hours. Real photos stay far below these.
MAX_SIDE = 50_000  # px; a 1×40,000,000 strip costs gigabytes in Pillow's resamplers
MAX_JPEG_SCANS = 100  # progressive JPEGs use about 10
MAX_JPEG_HEADER_SEGMENTS = 1_000
MAX_JPEG_JUNK_BYTES = 4_096  # stray bytes between markers, which Pillow skips one by one
MAX_PNG_CHUNKS = 20_000  # a 25 MiB PNG with 8 KiB IDAT chunks has about 3,200
MAX_GIF_BLOCKS_BEFORE_IMAGE = 10_000  # extension blocks and sub-blocks before the first frame
_NOT_FF = re.compile(rb"[^\xff]*")
_FF_RUN = re.compile(rb"\xff+")


class ImageError(Exception):
    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int
    max_pixels: int
    formats: frozenset[str]

    @classmethod
    def from_config(cls, images_cfg) -> DecodeLimits:
        return cls(images_cfg.max_bytes, images_cfg.max_pixels, frozenset(images_cfg.formats))

    def allowed_text(self) -> str:
        order = ["jpeg", "png", "gif", "webp", "bmp", "tiff"]
        names = {"jpeg": "JPEG", "png": "PNG", "gif": "GIF", "webp": "WebP", "bmp": "BMP", "tiff": "TIFF"}
        allowed = [names[f] for f in order if f in self.formats]
        return allowed[0] if len(allowed) == 1 else ", ".join(allowed[:-1]) + " or " + allowed[-1]


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):.1f} MiB"
    return f"{n / 1024:.0f} KiB" if n >= 1024 else f"{n} bytes"


def _open(data: bytes, pillow_format: str, description: str, limits: DecodeLimits) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=[pillow_format])
    except Image.DecompressionBombError:
        raise ImageError(
            ErrorCode.TOO_MANY_PIXELS,
            f"the {description} declares far too many pixels; the limit is {limits.max_pixels / 1e6:.1f} MP",
        ) from None
    except Exception as e:  # Pillow raises many types on hostile headers
        raise ImageError(ErrorCode.CORRUPT, f"the {description} is damaged and cannot be read ({_reason(e)})") from None


def _reason(e: BaseException) -> str:
    text = re.sub(r"\s*<[^>]* at 0x[0-9a-f]+>", "", str(e)).strip() or type(e).__name__
    return text[:120]


def _check_jpeg_structure(data: bytes) -> None:
    scans = data.count(b"\xff\xda")  # an upper bound: entropy-coded data never holds FF DA
    if scans > MAX_JPEG_SCANS:
        raise ImageError(ErrorCode.CORRUPT, f"the JPEG image has {scans} scans; at most {MAX_JPEG_SCANS} are accepted")
    # Walk the header segments up to the first scan: the part Pillow parses in Python.
    pos, segments, junk, end = 2, 0, 0, len(data)
    while pos < end:
        not_ff = _NOT_FF.match(data, pos)
        assert not_ff is not None  # `[^\xff]*` matches anywhere, if only the empty string
        nxt = not_ff.end()
        junk += nxt - pos
        if nxt >= end:
            break
        ff_run = _FF_RUN.match(data, nxt)
        assert ff_run is not None  # data[nxt] is 0xFF: what stopped the match above
        pos = ff_run.end() - 1  # the last 0xFF before the marker code
        junk += pos - nxt
        if junk > MAX_JPEG_JUNK_BYTES:
            raise ImageError(ErrorCode.CORRUPT, "the JPEG image has too much junk between its markers")
        if pos + 1 >= end:
            break
        marker = data[pos + 1]
        if marker in (0xDA, 0xD9):  # start of scan / end of image: libjpeg takes over
            break
        segments += 1
        if segments > MAX_JPEG_HEADER_SEGMENTS:
            raise ImageError(
                ErrorCode.CORRUPT, f"the JPEG image has more than {MAX_JPEG_HEADER_SEGMENTS} header segments"
            )
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
        elif pos + 4 <= end:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        else:
            break


def _check_png_structure(data: bytes) -> None:
    pos, chunks, end = 8, 0, len(data)
    while pos + 8 <= end:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise ImageError(ErrorCode.CORRUPT, f"the PNG image has more than {MAX_PNG_CHUNKS} chunks")
        length = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"IEND":
            break
        pos += 12 + length


def _check_gif_structure(data: bytes) -> None:
    # Walk the blocks before the first image descriptor: the part Pillow reads in Python.
    end = len(data)
    if end < 13:
        return
    colour_table = 3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0
    pos = 13 + colour_table  # after the header, screen descriptor and global colour table
    blocks = 0
    while pos < end and data[pos] == 0x21:  # extension: label, then sub-blocks up to a zero size
        pos += 2
        while pos < end:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS_BEFORE_IMAGE:
                raise ImageError(
                    ErrorCode.CORRUPT,
                    f"the GIF image has more than {MAX_GIF_BLOCKS_BEFORE_IMAGE} blocks before its first frame",
                )
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break


_STRUCTURE_CHECKS = {"jpeg": _check_jpeg_structure, "png": _check_png_structure, "gif": _check_gif_structure}


def _check_geometry(im: Image.Image, limits: DecodeLimits, description: str) -> None:
    width, height = im.size
    if width <= 0 or height <= 0:
        raise ImageError(ErrorCode.BAD_DIMENSIONS, f"the {description} has no pixels ({width}×{height})")
    if max(width, height) > MAX_SIDE:
        raise ImageError(
            ErrorCode.BAD_DIMENSIONS,
            f"the {description} is {width}×{height} px; sides longer than {MAX_SIDE} px are not accepted",
        )
    if width * height > limits.max_pixels:
        raise ImageError(
            ErrorCode.TOO_MANY_PIXELS,
            f"the {description} is {width}×{height} = {width * height / 1e6:.1f} MP; "
            f"the limit is {limits.max_pixels / 1e6:.1f} MP",
        )


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:
        return im  # a broken EXIF block is no reason to refuse the picture


def _scale_to_8bit(im: Image.Image) -> Image.Image:
    # Pillow's own I;16 → L conversion clips at 255 instead of scaling.
    arr = np.asarray(im)
    if im.mode == "F":
        top = float(arr.max()) if arr.size else 1.0
        arr = arr * 255.0 if top <= 1.0 else arr
        out = np.clip(arr, 0, 255).astype(np.uint8)
    else:
        out = np.clip(arr.astype(np.float64) / 257.0 + 0.5, 0, 255).astype(np.uint8)
        transparent = im.info.get("transparency")
        if isinstance(transparent, int):  # 16-bit grey with a tRNS colour: that colour shows white
            out[arr == transparent] = 255
    return Image.fromarray(out, "L")


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB; transparency is composited onto white."""
    mode = im.mode
    if mode.startswith("I") or mode == "F":
        return _scale_to_8bit(im).convert("RGB")
    # a tRNS colour (palette index, grey level or RGB triple) is transparency too
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, _WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    # L, 1, P, CMYK (Adobe-inverted handled by Pillow), YCbCr, LAB, HSV
    return im if mode == "RGB" else im.convert("RGB")


def decode_image(data: bytes, limits: DecodeLimits, draft_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode `data` into an RGB image, or raise ImageError.

    draft_size: the smallest (width, height) the caller needs; a JPEG may be
    decoded at a reduced scale that still covers it.
    """
    if not data:
        raise ImageError(ErrorCode.EMPTY, "the file is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(ErrorCode.TOO_LARGE, f"the file is {_size(len(data))}; the limit is {_size(limits.max_bytes)}")
    kind = sniff(data)
    if kind.pillow_format is None or kind.name not in limits.formats:
        raise ImageError(
            ErrorCode.UNSUPPORTED_FORMAT,
            f"this file is not an accepted image ({kind.description}); send a {limits.allowed_text()} image",
        )
    check = _STRUCTURE_CHECKS.get(kind.name)
    if check is not None:
        check(data)
    im = _open(data, kind.pillow_format, kind.description, limits)
    _check_geometry(im, limits, kind.description)
    try:
        # Image.open leaves an animation on its first frame; only that one is decoded.
        if draft_size and im.format in ("JPEG", "MPO"):
            im.draft(None, draft_size)
        im.load()
    except Exception as e:
        raise ImageError(
            ErrorCode.CORRUPT, f"the {kind.description} is damaged and cannot be decoded ({_reason(e)})"
        ) from None
    im = _apply_orientation(im)
    try:
        return to_rgb(im)
    except Exception as e:
        raise ImageError(
            ErrorCode.CORRUPT, f"the {kind.description} uses an unreadable pixel format ({_reason(e)})"
        ) from None
