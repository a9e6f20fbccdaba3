"""Train a tiny SiglipModel on coloured shapes with Japanese captions (about a minute on 2 cores).

It learns through the checkpoint's own Hugging Face processors (the reference), so a
test that then classifies through Wakeru's fast path proves that path feeds the model
what it was trained on: a wrong resize, channel order, normalisation, padding or
tokenisation shows up as the wrong label winning.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import torch

from model_worker.devtools.checkpoints import build_siglip

from .shapes import CLASSES, draw

TEMPLATES = ("{}の写真", "{}の画像", "{}が写っている写真", "{}")


def train(out: Path, *, steps: int = 3000, max_seconds: float = 240.0, seed: int = 0) -> dict:
    """A fixed number of steps (so the result is the same on every run); max_seconds only guards a very slow machine."""
    from transformers import AutoImageProcessor, AutoTokenizer, SiglipModel

    torch.manual_seed(seed)
    rng = random.Random(seed)
    build_siglip(out, "tiny", seed=seed)
    model = SiglipModel.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    processor = AutoImageProcessor.from_pretrained(out)
    max_len = model.config.text_config.max_position_embeddings

    # A fixed pool of images through the reference processor, reused across steps.
    pool_images, pool_labels = [], []
    for i in range(3000):
        label_idx = i % len(CLASSES)
        side = rng.randint(32, 192)
        size = (side, int(side * rng.uniform(0.6, 1.6)))
        pool_images.append(draw(CLASSES[label_idx], size, rng))
        pool_labels.append(label_idx)
    pixels = processor(images=pool_images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor(pool_labels)
    prompts = [t.replace("{}", c) for c in CLASSES for t in TEMPLATES]
    text = tokenizer(prompts, padding="max_length", max_length=max_len, truncation=True, return_tensors="pt")
    text = {k: v for k, v in text.items() if k in ("input_ids", "attention_mask")}

    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    start, step, loss_value = time.monotonic(), 0, float("nan")
    while step < steps and time.monotonic() - start < max_seconds:
        idx = torch.randint(0, len(pool_images), (64,))
        img = model.get_image_features(pixel_values=pixels[idx])
        img = getattr(img, "pooler_output", img)
        txt = model.get_text_features(**text)
        txt = getattr(txt, "pooler_output", txt)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = txt / txt.norm(dim=-1, keepdim=True)
        # class embedding = mean over its templates (what the engine's ensembling does)
        cls = txt.view(len(CLASSES), len(TEMPLATES), -1).mean(1)
        cls = cls / cls.norm(dim=-1, keepdim=True)
        logits = img @ cls.T * model.logit_scale.exp() + model.logit_bias
        target = torch.nn.functional.one_hot(labels[idx], len(CLASSES)).float()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        # a softmax term too, so the label share is sharp as well as the sigmoid
        loss = loss + torch.nn.functional.cross_entropy(logits, labels[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        loss_value = float(loss.detach())
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    return {"steps": step, "loss": loss_value, "seconds": time.monotonic() - start}
