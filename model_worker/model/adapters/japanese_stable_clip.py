"""Japanese Stable CLIP (stabilityai/japanese-stable-clip-vit-l-16), exactly as its model card runs it.

Text: ftfy + double html-unescape + whitespace collapse, then the tokenizer with
max_length=76, padding to max_length, truncation and no special tokens; the BOS id
is prepended (77 ids), the attention mask gets a leading 1, position_ids are 0..76.
Scores: softmax over 100 × cosine.
"""

from __future__ import annotations

import html
import re
from typing import Any

import ftfy
import torch
from PIL import Image

from model_worker.image.preprocess import from_image_processor
from model_worker.model.adapters.base import Adapter
from model_worker.model.loading import unwrap_features

MAX_SEQ_LEN = 77
LOGIT_SCALE = 100.0


def clean_text(text: str) -> str:
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text.strip()).strip()


def tokenize(tokenizer: Any, texts: list[str], max_seq_len: int = MAX_SEQ_LEN) -> dict[str, torch.Tensor]:
    texts = [clean_text(t) for t in texts]
    enc = tokenizer(texts, max_length=max_seq_len - 1, padding="max_length", truncation=True, add_special_tokens=False)
    bos = tokenizer.bos_token_id
    input_ids = [[bos] + list(ids) for ids in enc["input_ids"]]
    attention_mask = [[1] + list(m) for m in enc["attention_mask"]]
    position_ids = [list(range(len(input_ids[0])))] * len(texts)
    return {
        "input_ids": torch.tensor(input_ids, dtype=torch.long),
        "attention_mask": torch.tensor(attention_mask, dtype=torch.long),
        "position_ids": torch.tensor(position_ids, dtype=torch.long),
    }


class JapaneseStableClipAdapter(Adapter):
    family = "japanese-stable-clip"
    score_meaning = "share among the given labels: softmax of 100 × cosine (as in the model card)"

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
        if tokenizer.bos_token_id is None:
            raise ValueError("the tokenizer has no BOS token, which Japanese Stable CLIP prepends")
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.model_id, self.revision, self.device, self.dtype = model_id, revision, device, dtype
        self.preprocessor = from_image_processor(image_processor)

    def _image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return unwrap_features(self.model.get_image_features(**inputs))

    def _text_features(self, texts: list[str]) -> torch.Tensor:
        inputs = {k: v.to(self.device) for k, v in tokenize(self.tokenizer, texts).items()}
        return unwrap_features(self.model.get_text_features(**inputs))

    def _logits(self, cosine: torch.Tensor) -> torch.Tensor:
        return cosine * LOGIT_SCALE

    @torch.inference_mode()
    def reference_share(self, image: Image.Image, texts: list[str]) -> torch.Tensor:
        pixels = self.image_processor(images=image, return_tensors="pt")["pixel_values"]
        img = unwrap_features(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
        txt = unwrap_features(
            self.model.get_text_features(**{k: v.to(self.device) for k, v in tokenize(self.tokenizer, texts).items()})
        )
        img = img.float() / img.float().norm(dim=-1, keepdim=True)
        txt = txt.float() / txt.float().norm(dim=-1, keepdim=True)
        return (LOGIT_SCALE * img @ txt.T).softmax(dim=-1)[0]
