"""The fast preprocessing must reproduce the checkpoints' own Hugging Face image processors."""

import numpy as np
import pytest
import torch
from PIL import Image

from model_worker.image.decode import DecodeLimits, decode_image
from model_worker.image.preprocess import (
    FixedResolution,
    NaFlex,
    UnsupportedProcessor,
    from_image_processor,
    naflex_size,
)
from tests.conftest import SAMPLES

LIMITS = DecodeLimits(25 * 2**20, 40_000_000, frozenset({"jpeg", "png", "gif", "webp", "bmp"}))


def _processors():
    from transformers import CLIPImageProcessor, Siglip2ImageProcessor, SiglipImageProcessor

    return {
        # OpenAI CLIP: shortest edge 224 bicubic, centre crop, CLIP mean/std
        "clip": CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}),
        # MetaCLIP / MetaCLIP 2 (MetaClip2Model): CLIPImageProcessor, shortest edge + crop, bicubic, CLIP mean/std
        "metaclip2": CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3
        ),
        # Japanese Stable CLIP's processor shape: shortest edge + crop, mean = std = 0.5
        "jsc-like": CLIPImageProcessor(
            size={"shortest_edge": 224},
            crop_size={"height": 224, "width": 224},
            image_mean=[0.5] * 3,
            image_std=[0.5] * 3,
            resample=3,
        ),
        # odd crop inside an odd resize
        "clip-odd": CLIPImageProcessor(size={"shortest_edge": 231}, crop_size={"height": 199, "width": 213}),
        # SigLIP / SigLIP 2 fixed resolution: squash to 256×256 bilinear, mean = std = 0.5
        "siglip": SiglipImageProcessor(
            size={"height": 256, "width": 256}, resample=2, image_mean=[0.5] * 3, image_std=[0.5] * 3
        ),
        # SigLIP 2 NaFlex
        "naflex": Siglip2ImageProcessor(patch_size=16, max_num_patches=256),
    }


def _levels(ours: torch.Tensor, ref: torch.Tensor, std) -> torch.Tensor:
    """Normalised difference → 8-bit pixel levels, per channel."""
    diff = (ours - ref.float()).abs()
    std = torch.tensor(std, dtype=torch.float32)
    if diff.dim() == 4:  # N, C, H, W
        return diff * 255 * std.view(1, 3, 1, 1)
    return (diff.view(*diff.shape[:-1], -1, 3) * 255 * std).view(diff.shape)  # NaFlex: channels last in a patch


@pytest.fixture(scope="module")
def photos():
    images = [Image.open(p).convert("RGB") for p in sorted(SAMPLES.glob("*.jpg"))]
    assert len(images) >= 5
    # plus portrait and wide crops, so both orientations of every rule are covered
    images.append(images[0].crop((0, 0, 150, 290)))
    images.append(images[1].crop((0, 0, 600, 120)))
    return images


@pytest.mark.parametrize("name", ["clip", "metaclip2", "jsc-like", "clip-odd", "siglip", "naflex"])
def test_fast_path_matches_hugging_face_processor(name, photos):
    proc = _processors()[name]
    fast = from_image_processor(proc)
    assert isinstance(fast, NaFlex if name == "naflex" else FixedResolution)
    reference = proc(images=photos, return_tensors="pt")
    ours = fast.collate([fast.prepare(im) for im in photos], torch.device("cpu"), torch.float32)
    assert set(ours) == set(reference)
    for key, ref in reference.items():
        got = ours[key]
        assert got.shape == ref.shape, key
        if ref.is_floating_point():
            levels = _levels(got, ref, proc.image_std)
            # The centre crop is folded into the resize (a source box); Pillow may then run
            # its two passes in the other order, so a pixel can differ by a rounding step.
            # Downscaled photos: ≤ 1 level; upscaled crops: a few levels on edges.
            assert levels.max() <= 4.5, (key, levels.max())
            assert levels.mean() <= 0.15, (key, levels.mean())
        else:
            assert torch.equal(got.long(), ref.long()), key


@pytest.mark.parametrize("name", ["clip", "siglip", "naflex"])
def test_downscaled_photos_match_within_one_level(name, photos):
    proc = _processors()[name]
    fast = from_image_processor(proc)
    originals = photos[:5]  # the sample photos themselves, all larger than the model input
    reference = proc(images=originals, return_tensors="pt")["pixel_values"]
    ours = fast.collate([fast.prepare(im) for im in originals], torch.device("cpu"), torch.float32)["pixel_values"]
    levels = _levels(ours, reference, proc.image_std)
    assert levels.max() <= 1.001
    assert (levels > 0.5).float().mean() < 0.001  # fewer than 0.1 % of values off by that one level


def test_naflex_size_matches_transformers():
    try:  # transformers 5 (PIL backend module)
        from transformers.models.siglip2.image_processing_pil_siglip2 import get_image_size_for_max_num_patches as ref
    except ImportError:  # transformers 4
        from transformers.models.siglip2.image_processing_siglip2 import get_image_size_for_max_num_patches as ref

    for h, w in [(480, 640), (1, 20000), (20000, 3), (224, 224), (333, 517), (16, 16)]:
        assert naflex_size(h, w, 16, 256) == ref(h, w, 16, 256)


def test_extreme_aspect_ratio_never_allocates_the_resized_strip():
    proc = _processors()["clip"]
    fast = from_image_processor(proc)
    strip = Image.new("RGB", (40000, 1), (10, 200, 30))  # transformers would resize to 8,960,000 × 224
    out = fast.prepare(strip)["pixels"]
    assert out.shape == (224, 224, 3)
    assert tuple(out[112, 112]) == (10, 200, 30)
    tall = fast.prepare(Image.new("RGB", (2, 30000), (200, 1, 2)))["pixels"]
    assert tall.shape == (224, 224, 3)
    naflex = from_image_processor(_processors()["naflex"]).prepare(strip)
    assert naflex["patches"].shape[0] <= 256


def test_draft_decoding_stays_close_to_full_decoding(photos):
    """JPEG draft decoding changes pixels a little; the model input must stay close."""
    proc = _processors()["siglip"]
    fast = from_image_processor(proc)
    big = photos[0].resize((2048, 1360), Image.Resampling.BICUBIC)
    import io

    buf = io.BytesIO()
    big.save(buf, "JPEG", quality=92)
    full = fast.prepare(decode_image(buf.getvalue(), LIMITS))["pixels"].astype(np.float32)
    drafted_image = decode_image(buf.getvalue(), LIMITS, fast.draft_size)
    assert drafted_image.width < 2048  # the draft path really ran
    drafted = fast.prepare(drafted_image)["pixels"].astype(np.float32)
    assert np.abs(full - drafted).mean() < 3.0  # out of 255


def test_normalisation_runs_on_the_batch_device_in_the_model_dtype():
    fast = from_image_processor(_processors()["siglip"])
    batch = fast.collate([fast.prepare(Image.new("RGB", (50, 40), (255, 0, 128)))], torch.device("cpu"), torch.bfloat16)
    assert batch["pixel_values"].dtype == torch.bfloat16
    px = batch["pixel_values"][0, :, 10, 10].float()
    assert torch.allclose(px, torch.tensor([1.0, -1.0, 0.0039]), atol=0.01)


def test_unsupported_processor_is_reported():
    from transformers import CLIPImageProcessor

    with pytest.raises(UnsupportedProcessor):
        from_image_processor(CLIPImageProcessor(size={"shortest_edge": 224}, do_center_crop=False))


def test_resample_modes_from_either_processor_backend():
    import enum

    from model_worker.image.preprocess import _resample

    class InterpolationMode(enum.Enum):  # torchvision's shape: names, string values
        BICUBIC = "bicubic"
        BILINEAR = "bilinear"

    assert _resample(3) == Image.Resampling.BICUBIC
    assert _resample(Image.Resampling.BILINEAR) == Image.Resampling.BILINEAR
    assert _resample(InterpolationMode.BICUBIC) == Image.Resampling.BICUBIC
    assert _resample(None) == Image.Resampling.BILINEAR
    with pytest.raises(UnsupportedProcessor):
        _resample("sinc")
