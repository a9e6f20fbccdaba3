import io
import time

import numpy as np
import pytest
from PIL import Image

from model_worker.image.decode import DecodeLimits, ImageError, decode_image
from tests.support.hostile import corpus, encoded
from wakeru.protocol import ErrorCode

LIMITS = DecodeLimits(
    max_bytes=25 * 2**20, max_pixels=40_000_000, formats=frozenset({"jpeg", "png", "gif", "webp", "bmp"})
)
HOSTILE = corpus()


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_file_gets_its_error_code_and_a_message(name):
    data, expected = HOSTILE[name]
    start = time.perf_counter()
    with pytest.raises(ImageError) as info:
        decode_image(data, LIMITS, (224, 224))
    assert info.value.code == expected, info.value.message
    assert info.value.message and "0x" not in info.value.message
    # rejections are cheap: nothing here decodes a large picture
    assert time.perf_counter() - start < 5


def test_messages_are_specific():
    def message(data):
        with pytest.raises(ImageError) as info:
            decode_image(data, LIMITS)
        return info.value.message

    assert "SVG" in message(HOSTILE["svg"][0])
    assert "PDF" in message(HOSTILE["pdf"][0])
    assert "JPEG, PNG, GIF, WebP or BMP" in message(HOSTILE["zip"][0])
    assert "8000×6000 = 48.0 MP; the limit is 40.0 MP" in message(HOSTILE["png-bomb-48mp"][0])


def test_too_large_checked_before_anything_else():
    small = DecodeLimits(max_bytes=1000, max_pixels=LIMITS.max_pixels, formats=LIMITS.formats)
    data = encoded(Image.effect_noise((200, 200), 80).convert("RGB"), "PNG")
    assert len(data) > 1000
    with pytest.raises(ImageError) as info:
        decode_image(data, small)
    assert info.value.code == ErrorCode.TOO_LARGE
    assert (
        info.value.message == f"the file is {len(data) // 1024} KiB; the limit is 1000 bytes"
        or info.value.message == f"the file is {round(len(data) / 1024)} KiB; the limit is 1000 bytes"
    )


def test_eps_never_reaches_ghostscript(monkeypatch):
    from PIL import EpsImagePlugin

    calls = []
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: calls.append(a))
    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", lambda self: calls.append("open"))
    for name in ("eps", "eps-binary-header"):
        with pytest.raises(ImageError) as info:
            decode_image(HOSTILE[name][0], LIMITS)
        assert info.value.code == ErrorCode.UNSUPPORTED_FORMAT
    assert calls == []


def test_format_comes_from_bytes_and_config_allowlist():
    png = encoded(Image.new("RGB", (8, 8), (1, 2, 3)), "PNG")
    only_jpeg = DecodeLimits(LIMITS.max_bytes, LIMITS.max_pixels, frozenset({"jpeg"}))
    with pytest.raises(ImageError) as info:
        decode_image(png, only_jpeg)
    assert info.value.code == ErrorCode.UNSUPPORTED_FORMAT and "send a JPEG image" in info.value.message
    with_tiff = DecodeLimits(LIMITS.max_bytes, LIMITS.max_pixels, frozenset({"tiff"}))
    tiff = encoded(Image.new("RGB", (8, 8), (9, 8, 7)), "TIFF")
    assert decode_image(tiff, with_tiff).getpixel((0, 0)) == (9, 8, 7)


def _pixel(data: bytes) -> tuple[int, int, int]:
    im = decode_image(data, LIMITS)
    assert im.mode == "RGB"
    return im.getpixel((im.width // 2, im.height // 2))


def _close(a, b, tol=3):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_cmyk_jpeg_becomes_correct_rgb():
    cmyk = Image.new("CMYK", (32, 32), (0, 255, 255, 0))  # pure red in CMYK
    assert _close(_pixel(encoded(cmyk, "JPEG", quality=95)), (255, 0, 0), tol=12)


def test_16bit_grayscale_png_is_scaled_not_clipped():
    arr = np.full((16, 16), 32768, dtype=np.uint16)
    im = Image.fromarray(arr)  # mode I;16
    assert im.mode.startswith("I")
    assert _close(_pixel(encoded(im, "PNG")), (128, 128, 128), tol=1)


def test_palette_with_transparency_is_composited_on_white():
    im = Image.new("P", (16, 16), 0)
    im.putpalette([0, 0, 0] + [255, 0, 0] * 255)
    im.info["transparency"] = 0
    assert _pixel(encoded(im, "PNG", transparency=0)) == (255, 255, 255)
    assert _pixel(encoded(im, "GIF", transparency=0)) == (255, 255, 255)


def test_la_and_rgba_are_composited_on_white():
    assert _pixel(encoded(Image.new("LA", (8, 8), (0, 0)), "PNG")) == (255, 255, 255)
    half_red = Image.new("RGBA", (8, 8), (255, 0, 0, 128))
    assert _close(_pixel(encoded(half_red, "PNG")), (255, 127, 127), tol=2)
    assert _close(_pixel(encoded(half_red, "WEBP", lossless=True)), (255, 127, 127), tol=2)


def test_one_bit_and_grayscale():
    assert _pixel(encoded(Image.new("1", (8, 8), 0), "PNG")) == (0, 0, 0)
    assert _pixel(encoded(Image.new("1", (8, 8), 1), "BMP")) == (255, 255, 255)
    assert _pixel(encoded(Image.new("L", (8, 8), 77), "PNG")) == (77, 77, 77)


def test_exif_orientation_is_applied():
    im = Image.new("RGB", (40, 20), (0, 0, 255))
    im.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    out = decode_image(encoded(im, "JPEG", exif=exif, quality=95), LIMITS)
    assert out.size == (20, 40)
    assert _close(out.getpixel((10, 5)), (255, 0, 0), tol=20)  # red ends up on top
    assert _close(out.getpixel((10, 35)), (0, 0, 255), tol=20)


def test_broken_exif_does_not_refuse_the_picture():
    data = bytearray(
        encoded(Image.new("RGB", (16, 16), (5, 6, 7)), "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    )
    assert decode_image(bytes(data), LIMITS).size == (16, 16)


def test_gifs_with_comments_and_global_palettes_still_decode():
    im = Image.new("P", (16, 16), 1)
    im.putpalette([0, 0, 0, 250, 10, 10] + [0, 0, 0] * 254)
    data = encoded(im, "GIF", comment=b"x" * 2000)  # several comment sub-blocks
    assert _close(_pixel(data), (250, 10, 10))


def test_animation_first_frame_only():
    frames = [Image.new("RGB", (16, 16), c) for c in ((255, 0, 0), (0, 0, 255))]
    for fmt in ("GIF", "WEBP", "PNG"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        assert _close(_pixel(buf.getvalue()), (255, 0, 0), tol=8), fmt


def test_jpeg_draft_decodes_at_reduced_scale():
    big = Image.effect_noise((2000, 1500), 40).convert("RGB")
    data = encoded(big, "JPEG", quality=90)
    full = decode_image(data, LIMITS)
    drafted = decode_image(data, LIMITS, draft_size=(224, 224))
    assert full.size == (2000, 1500)
    assert drafted.size == (500, 375)  # 1/4 scale: the smallest that still covers 224 on both sides
    assert min(drafted.size) >= 224


def test_extreme_aspect_ratios_decode():
    for size in ((20000, 1), (1, 20000)):
        assert decode_image(encoded(Image.new("RGB", size, (1, 2, 3)), "PNG"), LIMITS).size == size


def test_pixel_limit_is_configurable():
    tight = DecodeLimits(LIMITS.max_bytes, 100, LIMITS.formats)
    with pytest.raises(ImageError) as info:
        decode_image(encoded(Image.new("RGB", (11, 10)), "PNG"), tight)
    assert info.value.code == ErrorCode.TOO_MANY_PIXELS
    assert decode_image(encoded(Image.new("RGB", (10, 10)), "PNG"), tight).size == (10, 10)


def test_trns_transparency_of_grey_rgb_and_16bit_pngs_shows_white():
    # optimisers turn RGBA with on/off alpha into RGB/L + a tRNS colour; that colour is transparent
    rgb = Image.new("RGB", (8, 8), (0, 0, 0))
    assert _pixel(encoded(rgb, "PNG", transparency=(0, 0, 0))) == (255, 255, 255)
    assert _pixel(encoded(Image.new("RGB", (8, 8), (9, 9, 9)), "PNG", transparency=(0, 0, 0))) == (9, 9, 9)
    assert _pixel(encoded(Image.new("L", (8, 8), 0), "PNG", transparency=0)) == (255, 255, 255)
    grey16 = Image.fromarray(np.zeros((8, 8), dtype=np.uint16))
    assert _pixel(encoded(grey16, "PNG", transparency=0)) == (255, 255, 255)


@pytest.mark.slow
def test_allowed_extreme_strips_stay_within_bounded_memory(tmp_path):
    """The longest allowed side (50,000 px) through decoding and every preprocessing rule,
    measured in a fresh process: peak memory must not balloon."""
    import subprocess
    import sys

    script = tmp_path / "strips.py"
    script.write_text("""
import io, resource, sys
from PIL import Image
from transformers import CLIPImageProcessor, Siglip2ImageProcessor, SiglipImageProcessor
from model_worker.image.decode import DecodeLimits, decode_image
from model_worker.image.preprocess import from_image_processor
rules = [from_image_processor(p) for p in (
    SiglipImageProcessor(size={"height": 256, "width": 256}),
    CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
    Siglip2ImageProcessor(patch_size=16, max_num_patches=256))]
limits = DecodeLimits(25 << 20, 40_000_000, frozenset({"png", "jpeg"}))
strips = []
for size in ((50_000, 1), (1, 50_000), (50_000, 800)):
    buf = io.BytesIO(); Image.new("RGB", size, (10, 200, 30)).save(buf, "PNG"); strips.append(buf.getvalue())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for data in strips:
    for rule in rules:
        rule.prepare(decode_image(data, limits, rule.draft_size))
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    grown_mib = int(proc.stdout.strip().splitlines()[-1])
    assert grown_mib < 400, grown_mib  # 50,000×800 decodes to 120 MB; nothing may multiply that


@pytest.mark.parametrize(
    "name",
    [
        "jpeg-300-repeated-scans",
        "jpeg-200k-app-markers",
        "jpeg-1mb-junk-between-markers",
        "png-200k-chunks",
        "gif-100k-extensions",
        "gif-no-global-palette-100k-extensions",
    ],
)
def test_structure_floods_are_refused_before_pillow_parses_them(name, monkeypatch):
    opened = []
    monkeypatch.setattr(Image, "open", lambda *a, **k: opened.append(a))
    with pytest.raises(ImageError) as info:
        decode_image(HOSTILE[name][0], LIMITS, (224, 224))
    assert info.value.code == ErrorCode.CORRUPT and opened == []


def test_ordinary_progressive_and_thumbnail_jpegs_still_decode():
    photo = Image.open(__import__("tests.conftest", fromlist=["SAMPLES"]).SAMPLES / "coffee.jpg")
    progressive = encoded(photo, "JPEG", progressive=True, quality=90)
    assert decode_image(progressive, LIMITS).size == photo.size
    exif = Image.Exif()
    exif[0x010F] = "Camera"
    with_exif = encoded(photo, "JPEG", exif=exif, quality=90)
    assert decode_image(with_exif, LIMITS, (224, 224)).size[0] >= 224
