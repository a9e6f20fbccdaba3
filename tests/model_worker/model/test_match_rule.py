"""`match` and `fits`: whether a label describes the picture at all, the same whatever else is in
the set. SigLIP: its own sigmoid (tested with the trained model in test_trained_model.py). CLIP:
the two-way contest of the label with a neutral reference description, checked here on the real
CLIPModel class with embeddings placed by hand, and through the engine."""

import io
import math

import pytest
import torch
from PIL import Image

from model_worker.model.adapters import load_adapter
from model_worker.model.adapters.base import REFERENCE_MATCH_THRESHOLD, SIGMOID_MATCH_THRESHOLD
from model_worker.model.engine import Engine
from tests.conftest import SAMPLES, make_config
from wakeru.protocol import ClassifyRequest


@pytest.fixture(scope="module")
def clip(checkpoints):
    config = make_config(checkpoints["clip"], model={"dtype": "float32"})
    return config, load_adapter(config.model)


def _unit(*xs: float) -> torch.Tensor:
    v = torch.tensor(xs, dtype=torch.float32)
    return v / v.norm()


def _at_cosine(image: torch.Tensor, other: torch.Tensor, cosine: float) -> torch.Tensor:
    """A unit vector at the given cosine from `image`, in the plane of `image` and `other`."""
    ortho = other - (other @ image) * image
    ortho = ortho / ortho.norm()
    return cosine * image + math.sqrt(1 - cosine**2) * ortho


def test_the_clip_match_is_the_contest_with_the_reference_and_ignores_the_other_labels(clip):
    _, adapter = clip
    assert adapter.family == "clip" and not adapter.has_match_probability()
    assert adapter.default_match_threshold == REFERENCE_MATCH_THRESHOLD
    dim = 8
    image = _unit(*([1.0] + [0.0] * (dim - 1)))
    axes = [_unit(*([0.0] * i + [1.0] + [0.0] * (dim - 1 - i))) for i in range(1, dim)]
    reference = _at_cosine(image, axes[0], 0.20)[None]
    fitting, unfitting = _at_cosine(image, axes[1], 0.30), _at_cosine(image, axes[2], 0.10)
    pair = torch.stack([fitting, unfitting])
    many = torch.stack([fitting, unfitting, *(_at_cosine(image, axes[3 + i % 4], 0.05 + 0.01 * i) for i in range(11))])
    share2, match2 = adapter.score(image[None], pair, reference)
    share13, match13 = adapter.score(image[None], many, reference)
    scale = adapter.model.logit_scale.exp().item()
    assert match2[0, 0].item() == pytest.approx(1 / (1 + math.exp(-scale * (0.30 - 0.20))), rel=1e-4)
    assert match2[0, 0] > 0.5 > match2[0, 1]  # fits better / worse than "something"
    assert torch.allclose(match13[0, :2], match2[0]), "a label's match must not depend on the others"
    assert not torch.allclose(share13[0, :2], share2[0])  # while its share does
    same = adapter.score(image[None], reference, reference)[1]
    assert same.item() == pytest.approx(0.5)  # the reference itself is a coin toss
    assert adapter.score(image[None], pair)[1] is None  # no reference, no claim


def test_the_engine_gives_clip_labels_a_match_and_a_fit_independent_of_the_set(clip):
    config, adapter = clip
    image = Image.open(SAMPLES / "cat.jpg").convert("RGB")
    buf = io.BytesIO()
    image.save(buf, "PNG")
    few = ("猫", "犬")
    many = (*few, "象", "宇宙飛行士", "コーヒー", "ロケット", "車", "山", "海", "花", "空", "鳥", "魚")
    with Engine(adapter, config) as engine:
        assert engine.match_threshold == REFERENCE_MATCH_THRESHOLD and engine.reference.shape[0] == 1
        results = {
            len(labels): engine.submit(
                ClassifyRequest(id=str(len(labels)), image=buf.getvalue(), labels=labels, top_k=len(labels))
            ).result()
            for labels in (few, many)
        }
    by_label = {n: {s.label: s for s in r.top} for n, r in results.items()}
    for label in few:
        assert by_label[2][label].match == pytest.approx(by_label[13][label].match, abs=1e-5)
        assert by_label[2][label].fits == (by_label[2][label].match >= 0.5)
    assert results[2].none_fits == (not any(s.fits for s in results[2].top))


def test_a_configured_threshold_replaces_the_familys_default(checkpoints):
    config = make_config(checkpoints["siglip"], model={"dtype": "float32", "match_threshold": 0.9})
    adapter = load_adapter(config.model)
    assert adapter.default_match_threshold == SIGMOID_MATCH_THRESHOLD
    with Engine(adapter, config) as engine:
        assert engine.match_threshold == 0.9 and engine.reference is None  # SigLIP needs no reference
