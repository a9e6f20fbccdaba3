"""Every adapted family, built tiny from its real transformers class and loaded offline
through the real loading path, must score exactly as the plain Hugging Face forward does."""

import io

import pytest
import torch
from PIL import Image

from model_worker.model.adapters import ModelLoadError, load_adapter
from model_worker.model.engine import Engine
from tests.conftest import SAMPLES, make_config
from tests.support.text_calls import text_tower_calls
from wakeru.protocol import ClassifyRequest

LABELS = ("犬", "猫", "象", "宇宙飛行士", "a photo of a cat", "コーヒー")
FAMILIES = ["siglip", "siglip2", "clip", "metaclip2", "japanese-stable-clip"]


def _png(path) -> tuple[bytes, Image.Image]:
    im = Image.open(path).convert("RGB")
    buf = io.BytesIO()
    im.save(buf, "PNG")  # PNG: no draft decoding, so the engine sees exactly these pixels
    return buf.getvalue(), im


@pytest.fixture(scope="module", params=FAMILIES)
def loaded(request, checkpoints):
    family = request.param
    # float32: the comparison with the reference forward is exact to 2e-4
    config = make_config(
        checkpoints[family],
        model={"templates": ["{}"], "dtype": "float32", "trust_remote_code": family == "japanese-stable-clip"},
    )
    return family, config, load_adapter(config.model)


def test_family_is_detected_from_the_config(loaded):
    family, _, adapter = loaded
    expected = {
        "siglip": "siglip",
        "siglip2": "siglip",
        "clip": "clip",
        "metaclip2": "clip",
        "japanese-stable-clip": "japanese-stable-clip",
    }
    assert adapter.family == expected[family]
    assert adapter.has_match_probability() == (expected[family] == "siglip")
    if family == "siglip2":
        assert type(adapter.model).__name__ == "Siglip2Model"
    if family == "metaclip2":
        assert type(adapter.model).__name__ == "MetaClip2Model"
        assert type(adapter.tokenizer).__name__ == "XLMRobertaTokenizer"


def test_engine_scores_equal_the_reference_forward(loaded):
    _, config, adapter = loaded
    with Engine(adapter, config) as engine:
        for path in sorted(SAMPLES.glob("*.jpg")):
            data, image = _png(path)
            result = engine.submit(ClassifyRequest(id=path.name, image=data, labels=LABELS, top_k=len(LABELS))).result()
            assert result.ok, result.message
            ours = {s.label: s.score for s in result.top}
            reference = adapter.reference_share(image, list(LABELS))
            for label, ref in zip(LABELS, reference.tolist()):
                assert ours[label] == pytest.approx(ref, abs=2e-4), (path.name, label)


def test_scores_are_sorted_probabilities(loaded):
    _, config, adapter = loaded
    with Engine(adapter, config) as engine:
        data, _ = _png(SAMPLES / "cat.jpg")
        full = engine.submit(ClassifyRequest(id="a", image=data, labels=LABELS, top_k=99)).result()
        top3 = engine.submit(ClassifyRequest(id="b", image=data, labels=LABELS)).result()
    scores = [s.score for s in full.top]
    assert len(scores) == len(LABELS)  # top_k is capped at the label count
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert sum(scores) == pytest.approx(1.0, abs=1e-5)
    assert [s.label for s in top3.top] == [s.label for s in full.top[:3]]
    for s in full.top:  # every family has a match: SigLIP its sigmoid, CLIP the contest with the reference
        assert 0.0 <= s.match <= 1.0
        assert s.fits == (s.match >= adapter.default_match_threshold)


def test_text_tower_runs_once_per_label_set(loaded):
    _, config, adapter = loaded
    with text_tower_calls(adapter) as calls:
        with Engine(adapter, config.with_overrides(model={"templates": ["{}の写真", "{}の画像"]})) as engine:
            reference = 0 if adapter.has_match_probability() else 2  # CLIP: the neutral reference, once, at start
            assert sum(calls) == reference
            data, _ = _png(SAMPLES / "coffee.jpg")
            results = engine.classify([ClassifyRequest(id=str(i), image=data, labels=LABELS) for i in range(12)])
            assert all(r.ok for r in results)
            assert sum(calls) == reference + len(LABELS) * 2  # every label × template once, for all 12 images
            engine.classify([ClassifyRequest(id="x", image=data, labels=LABELS + ("鳥",))])
            assert sum(calls) == reference + len(LABELS) * 2 + 2  # only the new label is encoded


def test_bfloat16_on_cpu_stays_close(checkpoints):
    base = make_config(checkpoints["siglip"], model={"templates": ["{}"], "dtype": "float32"})
    fp32 = load_adapter(base.model)
    bf16 = load_adapter(base.with_overrides(model={"dtype": "bfloat16"}).model)
    assert bf16.dtype == torch.bfloat16 and fp32.dtype == torch.float32
    data, _ = _png(SAMPLES / "rocket.jpg")
    with Engine(fp32, base) as e32, Engine(bf16, base) as e16:
        a = e32.submit(ClassifyRequest(id="1", image=data, labels=LABELS, top_k=6)).result()
        b = e16.submit(ClassifyRequest(id="1", image=data, labels=LABELS, top_k=6)).result()
    sa = {s.label: s.score for s in a.top}
    for s in b.top:
        assert s.score == pytest.approx(sa[s.label], abs=0.05)


def test_load_errors_are_one_line_with_the_fix(tmp_path, checkpoints):
    from wakeru.config import Config

    def error(model_cfg):
        with pytest.raises(ModelLoadError) as info:
            load_adapter(model_cfg)
        message = str(info.value)
        assert "\n" not in message
        return message

    cfg = Config().model
    assert "does not exist" in error(cfg.model_copy(update={"id": str(tmp_path / "missing")}))
    assert "no config.json" in error(cfg.model_copy(update={"id": str(tmp_path)}))
    assert "trust_remote_code: true" in error(cfg.model_copy(update={"id": str(checkpoints["japanese-stable-clip"])}))
    # a real checkpoint that is not an image–text model
    from transformers import BertConfig, BertModel

    bert = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, vocab_size=50)
    ).save_pretrained(bert)
    assert "not an image–text dual encoder" in error(cfg.model_copy(update={"id": str(bert)}))
    # a hub id that is not in the (empty, offline) cache
    assert "not in the local Hugging Face cache" in error(
        cfg.model_copy(update={"id": "google/siglip2-base-patch16-256"})
    )


def test_home_relative_model_path(checkpoints, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "tiny").symlink_to(checkpoints["clip"], target_is_directory=True)
    adapter = load_adapter(make_config("~/models/tiny").model)
    assert adapter.model_id == "~/models/tiny" and adapter.family == "clip"
