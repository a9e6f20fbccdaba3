import torch

from model_worker.model.label_cache import LabelEmbeddingCache, render


class FakeTower:
    """Deterministic 'text tower': one random unit vector per text, and a call log."""

    def __init__(self):
        self.calls: list[list[str]] = []
        self.vectors: dict[str, torch.Tensor] = {}

    def __call__(self, texts):
        self.calls.append(list(texts))
        out = []
        for t in texts:
            if t not in self.vectors:
                g = torch.Generator().manual_seed(hash(t) % (2**31))
                v = torch.randn(8, generator=g)
                self.vectors[t] = v / v.norm()
            out.append(self.vectors[t])
        return torch.stack(out)


def test_ensemble_is_the_normalised_mean_over_templates():
    tower = FakeTower()
    cache = LabelEmbeddingCache(tower, model_key="m", templates=("{}の写真", "{}の画像"))
    emb = cache.get(("犬", "猫"))
    for i, label in enumerate(("犬", "猫")):
        mean = (tower.vectors[f"{label}の写真"] + tower.vectors[f"{label}の画像"]) / 2
        assert torch.allclose(emb[i], mean / mean.norm(), atol=1e-6)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2))


def test_text_tower_work_happens_once_per_label():
    tower = FakeTower()
    cache = LabelEmbeddingCache(tower, model_key="m", templates=("{}の写真", "{}の画像", "{}"))
    first = cache.get(("犬", "猫", "象"))
    assert cache.texts_encoded == 9 and len(tower.calls) == 1
    assert cache.get(("犬", "猫", "象")) is first  # whole-set hit: no work at all
    assert cache.texts_encoded == 9 and cache.set_hits == 1
    cache.get(("犬", "猫", "象", "鳥"))
    assert cache.texts_encoded == 12 and tower.calls[-1] == ["鳥の写真", "鳥の画像", "鳥"]
    reordered = cache.get(("象", "犬"))
    assert cache.texts_encoded == 12
    assert torch.equal(reordered[1], first[0])


def test_keys_include_model_and_templates():
    tower = FakeTower()
    cache = LabelEmbeddingCache(tower, model_key="org/model@rev", templates=("{}の写真",))
    cache.get(("犬",))
    (set_key,) = cache._sets.keys()
    (label_key,) = cache._labels.keys()
    assert set_key == (("org/model@rev", ("{}の写真",)), ("犬",))
    assert label_key == (("org/model@rev", ("{}の写真",)), "犬")


def test_lru_bounds_memory_and_large_sets_still_work():
    tower = FakeTower()
    cache = LabelEmbeddingCache(tower, model_key="m", templates=("{}",), max_labels=4, max_sets=2)
    big = tuple(f"l{i}" for i in range(10))  # more labels than the label LRU holds
    assert cache.get(big).shape == (10, 8)
    assert len(cache._labels) == 4
    cache.get(("a",))
    cache.get(("b",))
    assert len(cache._sets) == 2


def test_labels_with_braces_are_not_format_strings():
    assert render("{}の写真", "{0}{x}") == "{0}{x}の写真"
