"""The ONNX Runtime adapter for open_clip exports in Immich's layout (model_worker/model/adapters/onnx_clip.py).

Tiny transformers checkpoints of the real classes are exported here with torch's ONNX exporter, in that layout
(model_worker/devtools/onnx_export.py), and loaded back through the real loading path offline. The same weights
through transformers are the ground truth: the embeddings must agree, the engine's scores must equal the plain
forward's, and the export of the model trained on shapes must pick the same labels as the model itself."""

from __future__ import annotations

import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="pip install onnxruntime onnx (the dev extra)")
pytest.importorskip("onnx", reason="pip install onnx (the dev extra): torch's exporter writes with it")

from model_worker.devtools.checkpoints import build
from model_worker.devtools.onnx_export import export_onnx
from model_worker.model.adapters import ModelLoadError, OnnxClipAdapter, load_adapter
from model_worker.model.engine import Engine
from tests.conftest import SAMPLES, make_config
from tests.model_worker.model.test_trained_model import fresh_images
from tests.support.shapes import CLASSES
from wakeru.protocol import ClassifyRequest

LABELS = ("犬", "猫", "象", "宇宙飛行士", "a photo of a cat", "コーヒー")
TEXTS = ["犬の写真", "a photo of a cat", "  赤い   丸 ", "x", "とても長い説明文 " * 40]  # the last is truncated


def _config(path, **model):
    return make_config(path, model={"templates": ["{}"], "dtype": "float32", **model})


@pytest.fixture(scope="module")
def exports(checkpoints, tmp_path_factory):
    """(source checkpoint, export) pairs: an XLM-R-style tokenizer with a batch-1 graph pair (as Immich's),
    the same with any batch and Multilingual-CLIP's two text inputs, and CLIP's BPE (its pad is its </s>)."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        "metaclip2-batch1": (checkpoints["metaclip2"], export_onnx(checkpoints["metaclip2"], root / "a")),
        "metaclip2-mclip": (
            checkpoints["metaclip2"],
            export_onnx(checkpoints["metaclip2"], root / "b", batch_one=False, mclip=True),
        ),
        "clip-batch1": (checkpoints["clip"], export_onnx(checkpoints["clip"], root / "c")),
    }


@pytest.fixture(scope="module", params=["metaclip2-batch1", "metaclip2-mclip", "clip-batch1"])
def pair(request, exports):
    source, export = exports[request.param]
    return load_adapter(_config(source).model), load_adapter(_config(export).model)


def _pictures() -> list[Image.Image]:
    return [Image.open(path).convert("RGB") for path in sorted(SAMPLES.glob("*.jpg"))] + [
        Image.new("RGB", (7, 300), (250, 10, 10))  # an extreme aspect ratio
    ]


def test_an_export_is_detected_and_loaded_offline(pair):
    _, onnx = pair
    assert isinstance(onnx, OnnxClipAdapter) and onnx.family == "onnx-clip"
    assert not onnx.has_match_probability() and onnx.default_match_threshold == 0.5
    assert onnx.embedding_size == 32


def test_embeddings_equal_the_transformers_models(pair):
    reference, onnx = pair
    assert torch.allclose((reference.encode_texts(TEXTS) * onnx.encode_texts(TEXTS)).sum(-1), torch.ones(5), atol=1e-5)
    pictures = _pictures()
    ours = onnx.preprocessor.collate([onnx.preprocessor.prepare(p) for p in pictures], onnx.device, onnx.dtype)
    theirs = reference.preprocessor.collate(
        [reference.preprocessor.prepare(p) for p in pictures], reference.device, reference.dtype
    )
    assert torch.equal(ours["pixel_values"], theirs["pixel_values"])  # preprocess_cfg.json = the processor
    cosine = (reference.encode_images(theirs) * onnx.encode_images(ours)).sum(-1)
    assert torch.allclose(cosine, torch.ones(len(pictures)), atol=1e-5)


def test_engine_scores_equal_the_plain_forward(pair):
    _, onnx = pair
    config = _config(onnx.model_id)
    with Engine(onnx, config) as engine:
        for path in sorted(SAMPLES.glob("*.jpg")):
            image = Image.open(path).convert("RGB")
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            result = engine.submit(
                ClassifyRequest(id=path.name, image=buffer.getvalue(), labels=LABELS, top_k=len(LABELS))
            ).result()
            assert result.ok, result.message
            ours = {s.label: s.score for s in result.top}
            for label, expected in zip(LABELS, onnx.reference_share(image, list(LABELS)).tolist()):
                assert ours[label] == pytest.approx(expected, abs=2e-4), (path.name, label)
            assert all(0.0 <= s.match <= 1.0 for s in result.top)  # the contest with the neutral reference


def test_the_trained_models_export_picks_the_labels_the_model_picks(trained_model, tmp_path):
    export = export_onnx(trained_model, tmp_path / "shapes")  # SigLIP: squashed to its side, 16 text positions
    assert json.loads((export / "visual" / "preprocess_cfg.json").read_text())["resize_mode"] == "squash"
    images = fresh_images(seed=11, count=25)
    requests = [ClassifyRequest(id=str(i), image=data, labels=CLASSES) for i, (_, _, data) in enumerate(images)]
    tops = []
    for path in (trained_model, export):
        config = make_config(path)  # the default Japanese templates, ensembled
        with Engine(load_adapter(config.model), config) as engine:
            results = engine.classify(requests)
        assert all(r.ok for r in results)
        tops.append([r.top[0].label for r in results])
    assert tops[0] == tops[1]
    assert np.mean([top == label for top, (label, _, _) in zip(tops[1], images)]) >= 0.9


def test_make_checkpoint_writes_an_export_the_worker_loads(tmp_path):
    export = build("onnx-clip", tmp_path / "random", "tiny")
    assert {p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file()} >= {
        "config.json",
        "visual/model.onnx",
        "visual/preprocess_cfg.json",
        "textual/model.onnx",
        "textual/tokenizer.json",
        "textual/tokenizer_config.json",
    }
    assert isinstance(load_adapter(_config(export).model), OnnxClipAdapter)


def test_nllb_texts_get_their_languages_code(exports, tmp_path):
    from tokenizers import AddedToken, Tokenizer

    export = shutil.copytree(exports["metaclip2-batch1"][1], tmp_path / "nllb")
    tokenizer = Tokenizer.from_file(str(export / "textual" / "tokenizer.json"))
    tokenizer.add_special_tokens([AddedToken("jpn_Jpan", special=True), AddedToken("eng_Latn", special=True)])
    tokenizer.save(str(export / "textual" / "tokenizer.json"))
    adapter = load_adapter(_config(export).model)
    jpn, eng = tokenizer.token_to_id("jpn_Jpan"), tokenizer.token_to_id("eng_Latn")
    assert jpn in adapter.tokenizer.encode(adapter._clean("柴犬の写真")).ids
    assert eng in adapter.tokenizer.encode(adapter._clean("a photo of a dog")).ids
    assert adapter._clean("カメラ") == "jpn_Jpanカメラ"
    plain = load_adapter(_config(exports["metaclip2-batch1"][1]).model)
    assert plain._clean(" 犬の  写真 ") == "犬の 写真"  # no language codes in other vocabularies


def _broken(exports, tmp_path, change) -> str:
    export = shutil.copytree(exports["metaclip2-batch1"][1], tmp_path / "broken")
    change(export)
    with pytest.raises(ModelLoadError) as info:
        load_adapter(_config(export).model)
    message = str(info.value)
    assert "\n" not in message and str(export) in message
    return message


def test_broken_exports_are_refused_in_one_line_that_says_what(exports, tmp_path):
    def edit(path, **values):
        def change(export):
            data = json.loads((export / path).read_text())
            data.update(values)
            (export / path).write_text(json.dumps(data))

        return change

    assert "no textual/model.onnx" in _broken(
        exports, tmp_path / "1", lambda e: (e / "textual" / "model.onnx").unlink()
    )
    assert "resize_mode 'longest'" in _broken(
        exports, tmp_path / "2", edit("visual/preprocess_cfg.json", resize_mode="longest")
    )
    assert "takes 32×32 pictures but preprocess_cfg.json makes 64×64" in _broken(
        exports, tmp_path / "3", edit("visual/preprocess_cfg.json", size=[64, 64])
    )
    assert "no pad token" in _broken(exports, tmp_path / "4", edit("textual/tokenizer_config.json", pad_token="<nope>"))
    assert "is not valid JSON" in _broken(
        exports, tmp_path / "5", lambda e: (e / "visual" / "preprocess_cfg.json").write_text("{")
    )
    assert "takes 77 tokens but config.json's text_cfg.context_length is 64" in _broken(
        exports, tmp_path / "7", edit("config.json", text_cfg={"context_length": 64})
    )
    assert "cannot load visual/model.onnx" in _broken(
        exports, tmp_path / "6", lambda e: (e / "visual" / "model.onnx").write_bytes(b"not a graph")
    )


def test_without_onnx_runtime_the_error_says_what_to_install(exports, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(ModelLoadError, match=r"pip install 'wakeru\[onnx\]'"):
        load_adapter(_config(exports["clip-batch1"][1]).model)


def test_a_hub_export_is_read_from_the_hub_cache_without_the_other_runtimes_files(exports, tmp_path, monkeypatch):
    """model.id as a hub id (immich-app/…): the hub's cache laid out as huggingface_hub writes it, offline; the
    snapshot also holds an ARM NN file, which a download would skip."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--immich-app--tiny-xlm-roberta-clip"
    shutil.copytree(exports["metaclip2-batch1"][1], repo / "snapshots" / commit)
    (repo / "snapshots" / commit / "visual" / "model.armnn").write_bytes(b"not for us")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    adapter = load_adapter(_config("immich-app/tiny-xlm-roberta-clip").model)
    assert isinstance(adapter, OnnxClipAdapter) and adapter.root == repo / "snapshots" / commit
    assert adapter.cache_key == "immich-app/tiny-xlm-roberta-clip@main"
    # a transformers checkpoint's hub id still goes the transformers way
    other = tmp_path / "hub" / "models--org--tiny-clip"
    shutil.copytree(exports["clip-batch1"][0], other / "snapshots" / commit)
    (other / "refs").mkdir()
    (other / "refs" / "main").write_text(commit)
    assert type(load_adapter(_config("org/tiny-clip").model)).__name__ == "DualEncoderAdapter"
