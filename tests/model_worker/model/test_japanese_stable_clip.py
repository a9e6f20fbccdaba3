"""The Japanese Stable CLIP adapter against a local remote-code stand-in (auto_map,
trust_remote_code=True) that records what it receives."""

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from model_worker.model.adapters import load_adapter
from model_worker.model.adapters.japanese_stable_clip import clean_text
from model_worker.model.engine import Engine
from tests.conftest import make_config
from wakeru.protocol import ClassifyRequest


@pytest.fixture(scope="module")
def jsc(checkpoints):
    config = make_config(
        checkpoints["japanese-stable-clip"], model={"trust_remote_code": True, "templates": ["{}"], "dtype": "float32"}
    )
    return config, load_adapter(config.model)


def test_loaded_as_remote_code(jsc):
    _, adapter = jsc
    assert adapter.family == "japanese-stable-clip"
    assert type(adapter.model).__name__ == "JapaneseStableCLIPModel"
    assert type(adapter.model).__module__.startswith("transformers_modules")  # really the repo's own code


def test_text_cleaning_as_in_the_model_card():
    assert clean_text("  犬の\n\t写真  ") == "犬の 写真"
    assert clean_text("&amp;lt;猫&amp;gt;") == "<猫>"  # html.unescape twice
    assert clean_text("cafÃ©") == "café"  # ftfy repairs mojibake


def test_exact_ids_mask_and_position_ids(jsc):
    _, adapter = jsc
    tok = adapter.tokenizer
    texts = ["犬の写真", "  &amp;lt;猫&amp;gt;\n写真 ", "長い" * 100]
    adapter.model.text_calls.clear()
    adapter.encode_texts(texts)
    call = adapter.model.text_calls[-1]
    ids, mask, pos = call["input_ids"], call["attention_mask"], call["position_ids"]
    assert ids.shape == mask.shape == pos.shape == (3, 77)
    # independent expectation: the card's tokenizer call on the cleaned strings
    cleaned = ["犬の写真", "<猫> 写真", "長い" * 100]
    enc = tok(cleaned, max_length=76, padding="max_length", truncation=True, add_special_tokens=False)
    assert tok.bos_token_id == 1
    assert ids[:, 0].tolist() == [1, 1, 1]
    assert ids[:, 1:].tolist() == enc["input_ids"]
    assert mask[:, 0].tolist() == [1, 1, 1]
    assert mask[:, 1:].tolist() == enc["attention_mask"]
    assert pos.tolist() == [list(range(77))] * 3
    # no EOS appended, padding with [PAD] (id 3), the long text truncated to 76 + BOS
    assert tok.eos_token_id not in ids[0].tolist()
    n = sum(enc["attention_mask"][0])
    assert ids[0, 1 + n :].eq(tok.pad_token_id).all() and tok.pad_token_id == 3
    assert mask[2].sum() == 77


def test_scores_are_softmax_of_100_cosine(jsc):
    config, adapter = jsc
    labels = ("犬", "猫", "象")
    # Seeded, slightly blurred noise: the same picture every run. Unseeded sharp noise (Image.effect_noise) made this
    # flaky: the fast path folds the crop into the resize, and on rare pixel patterns that differs from the
    # processor's resize-then-crop by enough that 100 × cosine turned it into 2e-4 in the shares.
    pixels = np.random.default_rng(2).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    im = Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(1))
    buf = io.BytesIO()
    im.save(buf, "PNG")
    with Engine(adapter, config) as engine:
        result = engine.submit(ClassifyRequest(id="1", image=buf.getvalue(), labels=labels)).result()
    assert result.ok
    prepared = adapter.preprocessor.collate([adapter.preprocessor.prepare(im)], adapter.device, adapter.dtype)
    img = adapter.encode_images(prepared)
    txt = adapter.encode_texts(list(labels))
    expected = (100.0 * img @ txt.T).softmax(-1)[0]
    got = {s.label: s.score for s in result.top}
    for label, value in zip(labels, expected.tolist()):
        assert got[label] == pytest.approx(value, abs=1e-5)
    assert adapter.model.image_calls[-1][1:] == (3, 32, 32)
    assert torch.allclose(adapter.reference_share(im, list(labels)), expected, atol=1e-5)
