"""transformers-native dual encoders: CLIP, MetaCLIP 2, SigLIP, SigLIP 2 and anything with
get_image_features / get_text_features."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from model_worker.image.preprocess import from_image_processor
from model_worker.model.adapters.base import Adapter
from model_worker.model.loading import unwrap_features


class DualEncoderAdapter(Adapter):
    def __init__(
        self,
        *,
        model: Any,
        tokenizer: Any,
        image_processor: Any,
        model_id: str,
        revision: str | None,
        device: torch.device,
        dtype: torch.dtype,
    ):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.model_id, self.revision, self.device, self.dtype = model_id, revision, device, dtype
        self.preprocessor = from_image_processor(image_processor)
        model_type = getattr(model.config, "model_type", "")
        self.sigmoid = hasattr(model, "logit_bias")  # SigLIP family: sigmoid loss with a learnt bias
        self.family = "siglip" if self.sigmoid else "clip"
        text_cfg = getattr(model.config, "text_config", None)
        max_pos = getattr(text_cfg, "max_position_embeddings", None) or 77
        if self.sigmoid:
            # SigLIP pools the last position and was trained on lower-cased text padded
            # to exactly max_position_embeddings (64): anything else shifts every embedding.
            self.text_kwargs = {"padding": "max_length", "truncation": True, "max_length": max_pos}
            self.lowercase = True
            self.score_meaning = "share among the given labels: softmax of the sigmoid logits (the bias cancels)"
        else:
            self.text_kwargs = {"padding": True, "truncation": True, "max_length": max_pos}
            self.lowercase = False
            self.score_meaning = "share among the given labels: softmax of logit_scale × cosine"
        self.model_type = model_type
        self._input_names = {"input_ids", "attention_mask", "position_ids"}

    def has_match_probability(self) -> bool:
        return self.sigmoid

    def _prepare_texts(self, texts: list[str]) -> list[str]:
        return [t.lower() for t in texts] if self.lowercase else list(texts)

    def _image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return unwrap_features(self.model.get_image_features(**inputs))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        enc = self.tokenizer(self._prepare_texts(texts), return_tensors="pt", **self.text_kwargs)
        inputs = {k: v.to(self.device) for k, v in enc.items() if k in self._input_names}
        return unwrap_features(self.model.get_text_features(**inputs))

    def _logits(self, cosine: torch.Tensor) -> torch.Tensor:
        logits = cosine * self.model.logit_scale.float().exp()
        if self.sigmoid:
            logits = logits + self.model.logit_bias.float()
        return logits

    @torch.inference_mode()
    def reference_share(self, image: Image.Image, texts: list[str]) -> torch.Tensor:
        text = self.tokenizer(self._prepare_texts(texts), return_tensors="pt", **self.text_kwargs)
        pixels = self.image_processor(images=[image], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in text.items() if k in self._input_names}
        inputs.update(
            {
                k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                for k, v in pixels.items()
            }
        )
        out = self.model(**inputs)
        return out.logits_per_image.float().softmax(dim=-1)[0]
