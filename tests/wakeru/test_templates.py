from pathlib import Path

import pytest

from wakeru.config import Config, ConfigError, ModelSection, load_config
from wakeru.templates import OPENAI_JA, STANDARD, TEMPLATE_SETS, resolve_templates

REPO = Path(__file__).resolve().parents[2]


def render(template: str, label: str) -> str:
    # the model worker's rule (model_worker/model/label_cache.py), without importing torch
    return template.replace("{}", label, 1)


def test_the_default_is_unchanged():
    assert Config().model.templates == ("{}の写真", "{}の画像", "{}が写っている写真") == STANDARD
    assert load_config(REPO / "config.yaml", env={}).model.templates == STANDARD
    assert TEMPLATE_SETS["standard"] == STANDARD


def test_the_japanese_set_is_the_published_one():
    # 37 templates, as in rinnakk/japanese-clip and LAION-AI/CLIP_benchmark (jp_zeroshot_classification_templates.json)
    assert len(OPENAI_JA) == 37 and len(set(OPENAI_JA)) == 37
    assert TEMPLATE_SETS["openai-ja"] == OPENAI_JA
    assert OPENAI_JA[0] == "{}の悪い写真"
    assert OPENAI_JA[23] == "{}の写真"
    assert OPENAI_JA[-1] == "小さな{}の写真"
    assert "jpegで加工した{}の写真" in OPENAI_JA


@pytest.mark.parametrize("name", sorted(TEMPLATE_SETS))
def test_every_shipped_template_has_one_placeholder_and_renders_a_label(name):
    templates = TEMPLATE_SETS[name]
    assert templates and all(isinstance(t, str) for t in templates)
    for t in templates:
        assert t.count("{}") == 1, t
        assert t == t.strip() and "{c}" not in t
        text = render(t, "犬")
        assert "犬" in text and "{" not in text and "}" not in text
        assert text != "犬"  # the template adds words around the label
        assert render(t, "a{b}").count("a{b}") == 1  # braces in a label survive
    # the config accepts each set as it is
    assert ModelSection(templates=templates).templates == templates


def test_a_set_name_in_a_yaml_file(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  templates: openai-ja\n")
    assert load_config(f, env={}).model.templates == OPENAI_JA
    f.write_text("model:\n  templates: [standard, '{}のイラスト']\n")
    assert load_config(f, env={}).model.templates == (*STANDARD, "{}のイラスト")
    f.write_text("model:\n  templates: ['{}です']\n")  # a plain list, as before
    assert load_config(f, env={}).model.templates == ("{}です",)


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("openai-ja", OPENAI_JA),
        (" standard ", STANDARD),
        ("[openai-ja]", OPENAI_JA),
        ("standard,openai-ja", tuple(dict.fromkeys(STANDARD + OPENAI_JA))),  # "{}の写真" is in both: kept once
        ("{}の写真,{}の画像", ("{}の写真", "{}の画像")),
        ('["{}です"]', ("{}です",)),
    ],
)
def test_a_set_name_from_the_environment(raw, expected):
    config = load_config(REPO / "config.yaml", env={"WAKERU_MODEL__TEMPLATES": raw})
    assert config.model.templates == expected
    assert isinstance(config.model.templates, tuple)


def test_the_resolved_templates_survive_overrides_and_dumps():
    config = Config().with_overrides(model={"templates": "openai-ja"})
    assert config.model.templates == OPENAI_JA
    assert Config.model_validate(config.model_dump()) == config
    assert config.with_overrides(worker={"max_batch": 4}).model.templates == OPENAI_JA


@pytest.mark.parametrize("raw", ["openai-jp", "[openai-jp]", "写真"])
def test_an_unknown_name_is_refused_naming_the_choices(raw):
    with pytest.raises(ConfigError, match=r"model\.templates: .*standard, openai-ja.*\(from WAKERU_MODEL__TEMPLATES\)"):
        load_config(REPO / "config.yaml", env={"WAKERU_MODEL__TEMPLATES": raw})


def test_an_unknown_name_in_a_yaml_file_is_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  templates: clip80\n")
    with pytest.raises(
        ConfigError, match=r"model\.templates: unknown template set 'clip80'; choose from standard, openai-ja"
    ):
        load_config(f, env={})


@pytest.mark.parametrize(
    "value, expected",
    [
        ("standard", STANDARD),
        ("{}の写真", ("{}の写真",)),
        (["openai-ja"], OPENAI_JA),
        (("{}の写真", "{}の写真"), ("{}の写真",)),
    ],
)
def test_resolve_templates(value, expected):
    assert resolve_templates(value) == expected


@pytest.mark.parametrize(
    "value, message",
    [
        ("nope", r"unknown template set 'nope'; choose from standard, openai-ja"),
        (["{}と{}"], r"exactly once.*standard, openai-ja"),
        ([], r"at least one template"),
        ([1], r"templates are text"),
    ],
)
def test_resolve_templates_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        resolve_templates(value)


def test_an_empty_or_broken_list_is_still_refused():
    with pytest.raises(ConfigError, match=r"model\.templates: .*at least one template"):
        load_config(REPO / "config.yaml", env={"WAKERU_MODEL__TEMPLATES": "[]"})
    with pytest.raises(ConfigError, match=r"model\.templates: .*exactly once"):
        load_config(REPO / "config.yaml", env={"WAKERU_MODEL__TEMPLATES": "[1]"})
