"""Decoded RGB image → model input, reproducing the checkpoint's own image processor.

Two shapes of processor exist among the supported checkpoints:
  * fixed resolution (CLIP, SigLIP, Japanese Stable CLIP): resize (shortest edge, or
    straight to height×width), optional centre crop, rescale, normalise;
  * NaFlex (SigLIP 2 `-naflex`): resize keeping the aspect ratio to at most
    max_num_patches patches, cut into patches, pad, with a mask.

The CPU part (per image, in the decode threads) stops at uint8 pixels; rescale and
mean/std run once per batch on the model's device. A centre crop is folded into the
resize as a source box, so an extreme aspect ratio never allocates the full resized
strip; the result is the same as resizing everything and cropping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image


def _resample(value: Any) -> Image.Resampling:
    """PIL resampling from a processor's `resample`: an int / PILImageResampling, or (in
    torchvision-backed processors) an InterpolationMode such as BICUBIC."""
    if value is None:
        return Image.Resampling.BILINEAR
    if isinstance(value, int):
        return Image.Resampling(int(value))
    name = str(getattr(value, "name", value)).upper()
    try:
        return Image.Resampling[name]
    except KeyError:
        raise UnsupportedProcessor(f"unsupported resample mode {value!r}") from None


def _resize(
    im: Image.Image,
    size: tuple[int, int],
    resample: Image.Resampling,
    box: tuple[float, float, float, float] | None = None,
) -> Image.Image:
    # Exact resampling, as transformers does (no reducing_gap): JPEGs are already
    # shrunk by draft decoding, so the remaining factor is small.
    return im.resize(size, resample, box=box)


def _get(proc: Any, name: str, default: Any = None) -> Any:
    value = getattr(proc, name, default)
    return default if value is None else value


def _size_dict(value: Any) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, int):
        return {"height": value, "width": value}
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if v is not None}
    # transformers 5 SizeDict
    return {
        k: getattr(value, k)
        for k in ("height", "width", "shortest_edge", "longest_edge")
        if getattr(value, k, None) is not None
    }


class UnsupportedProcessor(ValueError):
    """The checkpoint's image processor does something this fast path does not reproduce."""


@dataclass
class _Normalise:
    scale: torch.Tensor  # per channel: rescale / std
    shift: torch.Tensor  # per channel: mean / std
    _per_device: dict = field(default_factory=dict, repr=False)  # the two, copied to each device once

    @classmethod
    def from_processor(cls, proc: Any) -> _Normalise:
        rescale = float(_get(proc, "rescale_factor", 1 / 255)) if _get(proc, "do_rescale", True) else 1.0
        if _get(proc, "do_normalize", True):
            mean = np.asarray(_get(proc, "image_mean", [0.0, 0.0, 0.0]), dtype=np.float64).reshape(-1)
            std = np.asarray(_get(proc, "image_std", [1.0, 1.0, 1.0]), dtype=np.float64).reshape(-1)
            mean, std = np.broadcast_to(mean, (3,)), np.broadcast_to(std, (3,))
        else:
            mean, std = np.zeros(3), np.ones(3)
        return cls(torch.tensor(rescale / std, dtype=torch.float32), torch.tensor(mean / std, dtype=torch.float32))

    def apply(self, pixels: torch.Tensor, channel_dim: int) -> torch.Tensor:
        """uint8 pixels (on any device) → normalised float32, channels along channel_dim."""
        shape = [1] * pixels.dim()
        shape[channel_dim] = 3
        scale, shift = self._on(pixels.device)
        return pixels.float().mul_(scale.view(shape)).sub_(shift.view(shape))

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._per_device:
            self._per_device[device] = (self.scale.to(device), self.shift.to(device))
        return self._per_device[device]


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


class Preprocessor:
    """Per-image `prepare` (CPU threads) and per-batch `collate` (model device)."""

    #: JPEG draft target: the decoder may shrink the image while both sides stay ≥ this.
    draft_size: tuple[int, int]

    def prepare(self, im: Image.Image) -> dict[str, Any]:
        raise NotImplementedError

    def collate(self, items: list[dict[str, Any]], device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        raise NotImplementedError


class FixedResolution(Preprocessor):
    def __init__(
        self, *, resize: dict[str, int], crop: tuple[int, int] | None, resample: Image.Resampling, normalise: _Normalise
    ):
        self.resize, self.crop, self.resample, self.normalise = resize, crop, resample, normalise
        if "shortest_edge" in resize:
            if crop is None:
                raise UnsupportedProcessor("shortest-edge resize without a centre crop gives unequal image sizes")
            side = resize["shortest_edge"]
        elif "height" in resize and "width" in resize:
            side = max(resize["height"], resize["width"])
        else:
            raise UnsupportedProcessor(f"unsupported resize rule {resize}")
        self.draft_size = (side, side)

    def _resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, exactly as transformers computes it."""
        if "shortest_edge" in self.resize:
            size = self.resize["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            return (new_short, new_long) if width <= height else (new_long, new_short)
        return self.resize["width"], self.resize["height"]

    def prepare(self, im: Image.Image) -> dict[str, Any]:
        new_w, new_h = self._resized_size(im.width, im.height)
        if self.crop is None:
            return {"pixels": np.asarray(_resize(im, (new_w, new_h), self.resample))}
        crop_h, crop_w = self.crop
        top, left = (new_h - crop_h) // 2, (new_w - crop_w) // 2
        if top >= 0 and left >= 0:
            sx, sy = im.width / new_w, im.height / new_h
            box = (left * sx, top * sy, (left + crop_w) * sx, (top + crop_h) * sy)
            return {"pixels": np.asarray(_resize(im, (crop_w, crop_h), self.resample, box=box))}
        # crop larger than the resized image: transformers pads with zeros (rare configs)
        resized = np.asarray(_resize(im, (new_w, new_h), self.resample))
        out = np.zeros((max(crop_h, new_h), max(crop_w, new_w), 3), dtype=np.uint8)
        pad_t, pad_l = math.ceil((out.shape[0] - new_h) / 2), math.ceil((out.shape[1] - new_w) / 2)
        out[pad_t : pad_t + new_h, pad_l : pad_l + new_w] = resized
        t, l = top + pad_t, left + pad_l
        return {"pixels": np.ascontiguousarray(out[max(0, t) : t + crop_h, max(0, l) : l + crop_w])}

    def collate(self, items, device, dtype):
        batch = _to_device(np.stack([it["pixels"] for it in items]), device)  # N, H, W, 3 uint8
        pixels = self.normalise.apply(batch.permute(0, 3, 1, 2), channel_dim=1)
        return {"pixel_values": pixels.to(dtype, memory_format=torch.contiguous_format)}


def naflex_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """Target (height, width) for NaFlex: transformers' binary search, reproduced exactly."""

    def scaled(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    lo, hi = eps / 10, 100.0
    while hi - lo >= eps:
        mid = (lo + hi) / 2
        if (scaled(mid, height) / patch_size) * (scaled(mid, width) / patch_size) <= max_num_patches:
            lo = mid
        else:
            hi = mid
    return scaled(lo, height), scaled(lo, width)


class NaFlex(Preprocessor):
    def __init__(self, *, patch_size: int, max_num_patches: int, resample: Image.Resampling, normalise: _Normalise):
        self.patch_size, self.max_num_patches = patch_size, max_num_patches
        self.resample, self.normalise = resample, normalise
        side = int(math.sqrt(max_num_patches)) * patch_size
        self.draft_size = (side, side)

    def prepare(self, im: Image.Image) -> dict[str, Any]:
        p = self.patch_size
        h, w = naflex_size(im.height, im.width, p, self.max_num_patches)
        arr = np.asarray(_resize(im, (w, h), self.resample))
        nh, nw = h // p, w // p
        # (nh, p, nw, p, 3) → (nh, nw, p, p, 3): row-major patches, pixels (y, x, channel) inside
        patches = arr.reshape(nh, p, nw, p, 3).transpose(0, 2, 1, 3, 4).reshape(nh * nw, p * p * 3)
        return {"patches": np.ascontiguousarray(patches), "shape": (nh, nw)}

    def collate(self, items, device, dtype):
        n = len(items)
        width = self.patch_size * self.patch_size * 3
        patches = np.zeros((n, self.max_num_patches, width), dtype=np.uint8)
        mask = np.zeros((n, self.max_num_patches), dtype=np.int32)
        for i, it in enumerate(items):
            count = it["patches"].shape[0]
            patches[i, :count] = it["patches"]
            mask[i, :count] = 1
        values = self.normalise.apply(_to_device(patches, device).view(n, self.max_num_patches, -1, 3), channel_dim=3)
        mask_t = _to_device(mask, device)
        values = values.view(n, self.max_num_patches, width) * mask_t.unsqueeze(-1)  # padding is 0, as in transformers
        shapes = torch.tensor([it["shape"] for it in items], dtype=torch.long, device=device)
        return {"pixel_values": values.to(dtype), "pixel_attention_mask": mask_t, "spatial_shapes": shapes}


def from_image_processor(proc: Any) -> Preprocessor:
    """Build the fast path from a loaded Hugging Face image processor."""
    normalise = _Normalise.from_processor(proc)
    resample = _resample(_get(proc, "resample"))
    if _get(proc, "max_num_patches") and _get(proc, "patch_size"):
        patch: Any = _get(proc, "patch_size")  # an int, or a size naming the height
        patch = patch if isinstance(patch, int) else _size_dict(patch).get("height")
        return NaFlex(
            patch_size=int(patch), max_num_patches=int(proc.max_num_patches), resample=resample, normalise=normalise
        )
    if not _get(proc, "do_resize", True):
        raise UnsupportedProcessor("image processors without a resize step are not supported")
    resize = _size_dict(_get(proc, "size"))
    crop = None
    if _get(proc, "do_center_crop", False):
        c = _size_dict(_get(proc, "crop_size"))
        if "height" not in c or "width" not in c:
            raise UnsupportedProcessor(f"unsupported crop size {c}")
        crop = (int(c["height"]), int(c["width"]))
    if "shortest_edge" in resize and "longest_edge" in resize:
        raise UnsupportedProcessor("shortest+longest edge resize is not supported")
    return FixedResolution(resize=resize, crop=crop, resample=resample, normalise=normalise)


def from_preprocess_cfg(cfg: dict[str, Any]) -> Preprocessor:
    """Build the fast path from an open_clip `preprocess_cfg.json` (the visual half of an ONNX export such as
    Immich's): `size`, `mean`, `std`, `interpolation`, `resize_mode`. "shortest" is open_clip's Resize(shortest
    edge) + CenterCrop, the same rule as a CLIP image processor; "squash" resizes straight to size × size."""
    size = cfg.get("size")
    side = size[0] if isinstance(size, list | tuple) else size
    if not isinstance(side, int) or side <= 0 or (isinstance(size, list | tuple) and len(set(size)) != 1):
        raise UnsupportedProcessor(f"unsupported size {size!r} (a square size is needed)")
    if cfg.get("mode", "RGB") != "RGB":
        raise UnsupportedProcessor(f"unsupported colour mode {cfg.get('mode')!r}")
    processor = {
        "image_mean": cfg.get("mean", [0.0, 0.0, 0.0]),
        "image_std": cfg.get("std", [1.0, 1.0, 1.0]),
        "resample": str(cfg.get("interpolation", "bicubic")),
    }
    normalise = _Normalise.from_processor(_Settings(processor))
    resample = _resample(processor["resample"])
    mode = cfg.get("resize_mode", "shortest")  # open_clip's default for configs older than the key
    if mode == "shortest":
        return FixedResolution(
            resize={"shortest_edge": side}, crop=(side, side), resample=resample, normalise=normalise
        )
    if mode == "squash":
        return FixedResolution(
            resize={"height": side, "width": side}, crop=None, resample=resample, normalise=normalise
        )
    raise UnsupportedProcessor(f"unsupported resize_mode {mode!r} (shortest and squash are)")


class _Settings:
    """A dict read like an image processor's attributes (for _Normalise.from_processor)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)
