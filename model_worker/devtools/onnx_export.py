"""Export a transformers dual encoder (CLIP, MetaCLIP 2, SigLIP) as two ONNX graphs in the layout of Immich's
open_clip exports (see model_worker/model/adapters/onnx_clip.py), so the ONNX adapter can be tested offline on
tiny checkpoints and benchmarked on random base-size ones. Needs the `onnx` package (torch's exporter writes
with it) besides onnxruntime.

    python -m model_worker make-checkpoint --family onnx-clip --preset tiny DIR    # MetaCLIP 2 weights, exported
"""

from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path
from typing import Any

_RESAMPLE_NAMES = {0: "nearest", 2: "bilinear", 3: "bicubic", 1: "lanczos"}


def _side(processor: Any) -> tuple[int, bool]:
    """(picture side, whether it is centre-cropped) from a fixed-resolution image processor."""
    crop = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    if crop:
        return int(crop["height"]), True
    size = processor.size
    return int(size.get("height") or size["shortest_edge"]), False


def export_onnx(checkpoint: Path, out: Path, *, batch_one: bool = True, mclip: bool = False, opset: int = 17) -> Path:
    """Write `out/{config.json, visual/, textual/}` from a saved checkpoint.

    batch_one: the graphs take exactly one input at a time (as Immich's exports do); else any batch.
    mclip: the text graph takes input_ids and attention_mask (Multilingual-CLIP's form) instead of "text"."""
    import torch
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from model_worker.model.loading import unwrap_features

    model = AutoModel.from_pretrained(checkpoint, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    processor = AutoImageProcessor.from_pretrained(checkpoint)
    side, cropped = _side(processor)
    context = int(model.config.text_config.max_position_embeddings)
    pad_id = int(tokenizer.pad_token_id)

    model.requires_grad_(False)

    class Tower(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model  # a submodule, so its weights become the graph's initialisers

    class Visual(Tower):
        def forward(self, image: torch.Tensor) -> torch.Tensor:
            features = unwrap_features(self.model.get_image_features(pixel_values=image))
            return torch.nn.functional.normalize(features, dim=-1)

    class Textual(Tower):
        def forward(self, text: torch.Tensor) -> torch.Tensor:
            # open_clip's Hugging Face text towers mask the padding themselves. A CLIP tokenizer pads with its
            # </s>, which its causal tower pools at: no mask there (nothing before </s> sees the padding anyway).
            mask = None if pad_id == tokenizer.eos_token_id else (text != pad_id).long()
            features = unwrap_features(self.model.get_text_features(input_ids=text.long(), attention_mask=mask))
            return torch.nn.functional.normalize(features, dim=-1)

    class MClipTextual(Tower):
        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            features = unwrap_features(
                self.model.get_text_features(input_ids=input_ids.long(), attention_mask=attention_mask.long())
            )
            return torch.nn.functional.normalize(features, dim=-1)

    (out / "visual").mkdir(parents=True, exist_ok=True)
    (out / "textual").mkdir(parents=True, exist_ok=True)
    batch = {} if batch_one else {0: "batch"}
    ids = torch.full((1, context), pad_id, dtype=torch.int32)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(
            Visual(),
            (torch.randn(1, 3, side, side),),
            str(out / "visual" / "model.onnx"),
            input_names=["image"],
            output_names=["embedding"],
            dynamic_axes={"image": batch, "embedding": batch} if batch else None,
            opset_version=opset,
            dynamo=False,
        )
        names = ["input_ids", "attention_mask"] if mclip else ["text"]
        torch.onnx.export(
            MClipTextual() if mclip else Textual(),
            (ids, torch.ones_like(ids)) if mclip else (ids,),
            str(out / "textual" / "model.onnx"),
            input_names=names,
            output_names=["embedding"],
            dynamic_axes={**{n: batch for n in names}, "embedding": batch} if batch else None,
            opset_version=opset,
            dynamo=False,
        )
    tokenizer.save_pretrained(out / "textual")
    # The side padding goes on can be a tokenizer class's default (Gemma pads on the left) that save_pretrained
    # does not write: the export states it, as the adapter reads it from there.
    saved = out / "textual" / "tokenizer_config.json"
    saved.write_text(json.dumps({**json.loads(saved.read_text()), "padding_side": tokenizer.padding_side}, indent=1))
    embed_dim = int(getattr(model.config, "projection_dim", 0) or model.config.text_config.hidden_size)
    config = {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": side},
        "text_cfg": {"context_length": context, "hf_tokenizer_name": str(checkpoint)},
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    preprocess = {
        "size": [side, side],
        "mode": "RGB",
        "mean": list(processor.image_mean),
        "std": list(processor.image_std),
        "interpolation": _RESAMPLE_NAMES.get(int(processor.resample), "bicubic"),
        "resize_mode": "shortest" if cropped else "squash",
        "fill_color": 0,
    }
    (out / "visual" / "preprocess_cfg.json").write_text(json.dumps(preprocess, indent=1))
    return out


def build_onnx_clip(out: Path, preset: str = "tiny", seed: int = 0) -> Path:
    """A random-weight MetaCLIP 2 (XLM-V-style tokenizer, the closest transformers class to an XLM-R CLIP),
    exported as an Immich-layout ONNX model."""
    from model_worker.devtools.checkpoints import build_metaclip2

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_metaclip2(Path(tmp) / "metaclip2", preset, seed)
        return export_onnx(checkpoint, Path(out))
