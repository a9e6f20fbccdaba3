"""Named sets of prompt templates for `model.templates`.

A template is a phrase with exactly one "{}" where the label goes ("{}の写真" → "犬の写真"). Every
label is embedded under each template of the set and the embeddings are averaged (prompt ensembling),
so a set trades text-encoding time (once per label) for robustness. Stdlib only: the bot imports it.
"""

from __future__ import annotations

from collections.abc import Iterable

# Today's default: three short phrasings of "a photo of {}".
STANDARD: tuple[str, ...] = ("{}の写真", "{}の画像", "{}が写っている写真")

# The 37 Japanese ImageNet templates adapted from the 80 of OpenAI's CLIP ("a bad photo of a {}.", …;
# CLIP's notebooks/Prompt_Engineering_for_ImageNet.ipynb), as published by rinna with japanese-clip /
# japanese-cloob (rinnakk/japanese-clip, src/japanese_clip/utils/imagenet_zeroshot_data.py,
# `imagenet_templates`, the "ja" entries) and in LAION-AI/CLIP_benchmark
# (clip_benchmark/datasets/jp_zeroshot_classification_templates.json, there with "{c}" for "{}").
# Both lists are identical, in this order; reproduced verbatim.
OPENAI_JA: tuple[str, ...] = (
    "{}の悪い写真",
    "多くの{}の写真",
    "{}の彫刻",
    "見づらい{}の写真",
    "{}の低解像度写真",
    "{}のレンダリング",
    "{}の落書き",
    "{}のトリミング写真",
    "{}のタトゥー",
    "刺繍された{}",
    "{}の明るい写真",
    "きれいな{}の写真",
    "汚れた{}の写真",
    "{}の暗い写真",
    "{}の絵",
    "私の{}の写真",
    "プラスチック製の{}",
    "かっこいい{}の写真",
    "{}のクローズアップ写真",
    "{}の白黒写真",
    "{}のピクセル写真",
    "jpegで加工した{}の写真",
    "{}のぼやけた写真",
    "{}の写真",
    "{}の良い写真",
    "ゲームに登場する{}",
    "折り紙で作った{}",
    "{}のスケッチ",
    "おもちゃの{}",
    "{}の演出",
    "大きな{}の写真",
    "素敵な{}の写真",
    "奇妙な{}の写真",
    "漫画の{}",
    "{}の芸術",
    "{}のぬいぐるみ",
    "小さな{}の写真",
)

TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "standard": STANDARD,
    "openai-ja": OPENAI_JA,
}

DEFAULT_SET = "standard"


def _names() -> str:
    return ", ".join(TEMPLATE_SETS)


def check_template(template: str) -> str:
    """The template itself, or ValueError unless it holds "{}" exactly once."""
    if template.count("{}") != 1:
        raise ValueError(
            f"template {template!r} must contain '{{}}' exactly once (where the label goes), "
            f"or be the name of a template set ({_names()})"
        )
    return template


def resolve_templates(value: str | Iterable[str]) -> tuple[str, ...]:
    """The templates `value` stands for: a set's name ("openai-ja"), one template ("{}の写真"), or a
    list whose items are templates or set names (["standard", "{}のイラスト"]). Set names are expanded
    in place and repeats dropped (the first one stays), so the order is kept. ValueError names the
    known sets when a name is unknown or a template lacks its "{}"."""
    if isinstance(value, str):
        if value.strip() in TEMPLATE_SETS:
            return TEMPLATE_SETS[value.strip()]
        if "{}" not in value:
            raise ValueError(f"unknown template set {value!r}; choose from {_names()}, or give a list of templates")
        items: Iterable[str] = (value,)
    else:
        items = value
    out: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"templates are text, not {type(item).__name__} ({item!r})")
        name = item.strip()
        out.extend(TEMPLATE_SETS[name] if name in TEMPLATE_SETS else (check_template(item),))
    if not out:
        raise ValueError(f"give at least one template, e.g. ['{{}}の写真'], or a template set ({_names()})")
    return tuple(dict.fromkeys(out))
