"""Pick and load the adapter for a checkpoint, detected from its config."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from model_worker.image.preprocess import UnsupportedProcessor
from model_worker.model.adapters.base import Adapter
from model_worker.model.adapters.dual_encoder import DualEncoderAdapter
from model_worker.model.adapters.japanese_stable_clip import JapaneseStableClipAdapter
from model_worker.model.adapters.onnx_clip import HUB_FILES, HUB_SKIPPED, OnnxClipAdapter, is_onnx_export
from model_worker.model.loading import (
    ModelLoadError,
    dtype_kwargs,
    explain,
    looks_local,
    model_source,
    resolve_device,
    resolve_dtype,
)

__all__ = ["Adapter", "ModelLoadError", "OnnxClipAdapter", "is_japanese_stable_clip", "load_adapter"]

log = logging.getLogger(__name__)


def is_japanese_stable_clip(config: Any) -> bool:
    archs = getattr(config, "architectures", None) or []
    return getattr(config, "model_type", "") == "japanese_stable_clip" or any("JapaneseStableCLIP" in a for a in archs)


def _load_model(auto_cls: Any, model_id: str, common: dict[str, Any], dtype: torch.dtype) -> Any:
    kwargs = {**common, **dtype_kwargs(dtype)}
    try:
        return auto_cls.from_pretrained(model_id, attn_implementation="sdpa", **kwargs)
    except (ValueError, TypeError, ImportError) as e:
        # Custom code or an architecture without SDPA support: its default attention.
        if "sdpa" not in str(e).lower() and "attn_implementation" not in str(e):
            raise
        log.info("SDPA attention not available for %s (%s); using the default", model_id, e)
        return auto_cls.from_pretrained(model_id, **kwargs)


def onnx_export_root(model_cfg: Any) -> Path | None:
    """The folder of an open_clip ONNX export (Immich's layout) when model.id names one, downloading a hub export's
    graphs and configs only; None for anything else (a transformers checkpoint, or an id the transformers path
    will explain)."""
    if looks_local(model_cfg.id):
        path = Path(model_cfg.id).expanduser()
        return path if is_onnx_export(path) else None
    try:
        from huggingface_hub import hf_hub_download, snapshot_download

        config = Path(hf_hub_download(model_cfg.id, "config.json", revision=model_cfg.revision))
        if not is_onnx_export(config.parent):
            return None
    except Exception:  # not reachable, not there: the transformers path gives the one-line reason
        return None
    try:
        folder = snapshot_download(
            model_cfg.id, revision=model_cfg.revision, allow_patterns=HUB_FILES, ignore_patterns=HUB_SKIPPED
        )
        return Path(folder)
    except Exception as e:
        raise explain(model_cfg.id, e) from None


def load_onnx_adapter(root: Path, model_cfg: Any) -> Adapter:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise ModelLoadError(
            f"{model_cfg.id} is an ONNX export: install ONNX Runtime (pip install 'wakeru[onnx]', or onnxruntime-gpu "
            "for a GPU)"
        ) from None
    try:
        adapter = OnnxClipAdapter(
            root,
            model_id=model_cfg.id,
            revision=model_cfg.revision,
            device=model_cfg.device,
            threads=torch.get_num_threads(),
        )
    except ModelLoadError as e:
        raise ModelLoadError(f"{model_cfg.id}: {e}") from None
    log.info("loaded %s (ONNX export) with %s", model_cfg.id, adapter.visual.session.get_providers()[0])
    return adapter


def load_adapter(model_cfg: Any) -> Adapter:
    """Load the configured checkpoint onto its device. Raises ModelLoadError."""
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoTokenizer

    model_id = model_cfg.id
    onnx_root = onnx_export_root(model_cfg)
    if onnx_root is not None:
        return load_onnx_adapter(onnx_root, model_cfg)
    source = model_source(model_id)
    device = resolve_device(model_cfg.device)
    dtype = resolve_dtype(model_cfg.dtype, device)
    common = {"revision": model_cfg.revision, "trust_remote_code": model_cfg.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(source, **common)
        jsc = is_japanese_stable_clip(config)
        model = _load_model(AutoModel, source, common, dtype)
        if not (hasattr(model, "get_image_features") and hasattr(model, "get_text_features")):
            raise ModelLoadError(
                f"{model_id} ({type(model).__name__}) is not an image–text dual encoder: it has no "
                "get_image_features/get_text_features; choose a CLIP, SigLIP or SigLIP 2 checkpoint"
            )
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        image_processor = AutoImageProcessor.from_pretrained(source, **common)
        model.eval().to(device)
        cls = JapaneseStableClipAdapter if jsc else DualEncoderAdapter
        adapter = cls(
            model=model,
            tokenizer=tokenizer,
            image_processor=image_processor,
            model_id=model_id,
            revision=model_cfg.revision,
            device=device,
            dtype=dtype,
        )
    except UnsupportedProcessor as e:
        raise ModelLoadError(f"{model_id}: its image processor is not supported ({e})") from None
    except Exception as e:
        raise explain(model_id, e) from None
    log.info("loaded %s (%s) on %s as %s", model_id, adapter.family, device, dtype)
    return adapter
