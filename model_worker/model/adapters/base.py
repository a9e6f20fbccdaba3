"""The one small interface every model family implements."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod

import torch
from PIL import Image

from model_worker.image.preprocess import Preprocessor

# Label texts per text-tower forward: bounds activation memory for 100-label sets × templates.
TEXT_CHUNK = 128


# "Does this label fit at all?" (LabelScore.match ≥ threshold), per kind of match:
# a SigLIP sigmoid probability is low in absolute terms (right labels often 0.05–0.9 on real
# photos, wrong ones orders of magnitude below 0.01); the CLIP-family match is a two-way
# contest with a neutral description, so 0.5 means "fits better than 'something'".
SIGMOID_MATCH_THRESHOLD = 0.01
REFERENCE_MATCH_THRESHOLD = 0.5


class Adapter(ABC):
    """Encode images and texts into L2-normalised embeddings, and turn similarities into scores."""

    family: str  # "clip", "siglip" or "japanese-stable-clip"
    score_meaning: str  # one line for the README/CLI: what `score` means for this family
    model_id: str
    device: torch.device
    dtype: torch.dtype
    preprocessor: Preprocessor

    @property
    def cache_key(self) -> str:
        """Identifies the weights; label embeddings are cached under it."""
        return f"{self.model_id}@{getattr(self, 'revision', None) or 'main'}"

    @functools.cached_property
    def embedding_size(self) -> int:
        """Length of the image and text embeddings: one short text through the text tower, once."""
        with torch.inference_mode():
            return int(self._text_features(["x"]).shape[-1])

    @abstractmethod
    def _image_features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def _text_features(self, texts: list[str]) -> torch.Tensor: ...

    @abstractmethod
    def _logits(self, cosine: torch.Tensor) -> torch.Tensor:
        """Cosine similarities (N images × L labels) → logits whose softmax is the label share."""

    def has_match_probability(self) -> bool:
        """Whether the model scores each label on its own (a sigmoid). Otherwise `match` compares the
        label with a neutral reference description, so the engine passes its embedding to score()."""
        return False

    @property
    def default_match_threshold(self) -> float:
        return SIGMOID_MATCH_THRESHOLD if self.has_match_probability() else REFERENCE_MATCH_THRESHOLD

    @torch.inference_mode()
    def encode_images(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return _normalise(self._image_features(inputs))

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        parts = [self._text_features(texts[i : i + TEXT_CHUNK]) for i in range(0, len(texts), TEXT_CHUNK)]
        return _normalise(torch.cat(parts))

    @torch.inference_mode()
    def score(
        self, image_emb: torch.Tensor, label_emb: torch.Tensor, reference_emb: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(share over the labels, match), both N × L in [0, 1].

        The share depends on which other labels are in the set; the match does not. SigLIP: the
        model's own sigmoid. Otherwise, given the neutral reference's embedding (1 × D): the
        two-way softmax of each label against it, sigmoid(logit − logit_reference), which uses the
        model's own logit scale and is the same whether a set has 2 labels or 100. None without it."""
        logits = self._logits(image_emb @ label_emb.T)
        share = logits.softmax(dim=-1)
        if self.has_match_probability():
            match = torch.sigmoid(logits)
        elif reference_emb is not None:
            match = torch.sigmoid(logits - self._logits(image_emb @ reference_emb.T))
        else:
            match = None
        return share, match

    @abstractmethod
    def reference_share(self, image: Image.Image, texts: list[str]) -> torch.Tensor:
        """The label share computed the plain way (the checkpoint's own processors, both
        towers, batch 1): the seed demo's loop, used by `bench` as the naive baseline and
        by tests as the ground truth for the fast path."""


def _normalise(x: torch.Tensor) -> torch.Tensor:
    x = x.float()
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
