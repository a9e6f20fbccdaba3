from pathlib import Path

import pytest

from wakeru.config import Config, ConfigError, load_config

REPO = Path(__file__).resolve().parents[2]


def test_shipped_config_yaml_is_valid_and_complete():
    config = load_config(REPO / "config.yaml", env={})
    assert config.model.id == "google/siglip2-base-patch16-256"
    assert config.model.templates[0] == "{}の写真"
    assert config.labels.presets["animals"][0] == "犬"
    assert {"max_batch", "max_wait_ms", "queue_size", "decode_threads"} <= set(config.worker.model_dump())


def test_shipped_config_yaml_spells_out_the_code_defaults():
    # a bot started outside the checkout (no config.yaml) must behave like one inside it
    assert load_config(REPO / "config.yaml", env={}) == Config()
    assert set(Config.model_fields) == set(__import__("yaml").safe_load((REPO / "config.yaml").read_text()))


def test_bot_sections_validate_urls_and_role_ids():
    with pytest.raises(ConfigError, match=r"discord\.gateway_url: .*ws or wss URL"):
        load_config(REPO / "config.yaml", env={"WAKERU_DISCORD__GATEWAY_URL": "http://x"})
    with pytest.raises(ConfigError, match=r"discord\.moderator_role_ids: .*positive integers"):
        load_config(REPO / "config.yaml", env={"WAKERU_DISCORD__MODERATOR_ROLE_IDS": "[abc]"})
    with pytest.raises(ConfigError, match=r"discord\.auto_classify"):
        load_config(REPO / "config.yaml", env={"WAKERU_DISCORD__AUTO_CLASSIFY": "sometimes"})
    config = load_config(
        REPO / "config.yaml",
        env={"WAKERU_DISCORD__MODERATOR_ROLE_IDS": '["123", 456]', "WAKERU_DISCORD__API_BASE": "http://127.0.0.1:9/"},
    )
    assert config.discord.moderator_role_ids == (123, 456) and config.discord.api_base == "http://127.0.0.1:9"


def test_defaults_without_any_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(env={})
    assert config == Config()


def test_partial_file_keeps_other_defaults(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("worker:\n  max_batch: 4\n")
    config = load_config(f, env={})
    assert config.worker.max_batch == 4
    assert config.worker.queue_size == Config().worker.queue_size


def test_env_overrides_with_types():
    config = load_config(
        REPO / "config.yaml",
        env={
            "WAKERU_MODEL__ID": "/models/x",
            "WAKERU_MODEL__REVISION": "0123456",  # a commit made of digits stays that text
            "WAKERU_MODEL__TRUST_REMOTE_CODE": "true",
            "WAKERU_WORKER__MAX_BATCH": "8",
            "WAKERU_IMAGES__FORMATS": "[jpg, PNG]",
            "WAKERU_MODEL__TEMPLATES": '["{}です"]',
        },
    )
    assert config.model.id == "/models/x"
    assert config.model.revision == "0123456"
    assert config.model.trust_remote_code is True
    assert config.worker.max_batch == 8
    assert config.images.formats == ("jpeg", "png")
    assert config.model.templates == ("{}です",)


def test_wakeru_config_names_another_file(tmp_path):
    f = tmp_path / "other.yaml"
    f.write_text("model:\n  id: /elsewhere\n")
    assert load_config(env={"WAKERU_CONFIG": str(f)}).model.id == "/elsewhere"
    with pytest.raises(ConfigError, match=r"not found \(from WAKERU_CONFIG\)"):
        load_config(env={"WAKERU_CONFIG": str(tmp_path / "missing.yaml")})


@pytest.mark.parametrize(
    "env, expected",
    [
        (
            {"WAKERU_MODEL__DEVICE": "gpu"},
            r"model\.device: must be auto, cpu, cuda or cuda:N.*\(from WAKERU_MODEL__DEVICE\)",
        ),
        ({"WAKERU_WORKER__MAX_BATCH": "0"}, r"worker\.max_batch: .*greater than or equal to 1.*got 0"),
        ({"WAKERU_MODEL__DTYPE": "int8"}, r"model\.dtype: .*'auto', 'float32', 'bfloat16' or 'float16'"),
        ({"WAKERU_MODEL__DEVIC": "cpu"}, r"WAKERU_MODEL__DEVIC: unknown key model\.devic"),
        ({"WAKERU_MODLE__ID": "x"}, r"WAKERU_MODLE__ID: unknown section 'modle'"),
        ({"WAKERU_IMAGES__FORMATS": "[jpeg, svg]"}, r"images\.formats: .*unknown format 'svg'"),
        ({"WAKERU_MODEL__TEMPLATES": '["写真"]'}, r"model\.templates: .*must contain '\{\}' exactly once"),
    ],
)
def test_errors_name_the_key_and_the_problem(env, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(REPO / "config.yaml", env=env)


def test_file_errors(tmp_path):
    bad_key = tmp_path / "k.yaml"
    bad_key.write_text("worker:\n  max_bach: 3\n")
    with pytest.raises(ConfigError, match=r"worker\.max_bach: unknown key"):
        load_config(bad_key, env={})
    bad_yaml = tmp_path / "y.yaml"
    bad_yaml.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad_yaml, env={})
    not_mapping = tmp_path / "m.yaml"
    not_mapping.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(not_mapping, env={})


def test_label_sets_in_config_are_checked(tmp_path):
    f = tmp_path / "l.yaml"
    f.write_text("labels:\n  max_length: 5\n  presets:\n    long: [犬, とてもとても長いラベル]\n")
    with pytest.raises(ConfigError, match=r"labels: presets\.long: label .* is 11 characters long; the limit is 5"):
        load_config(f, env={})


def test_with_overrides_validates():
    config = Config()
    assert config.with_overrides(model={"id": "/x"}).model.id == "/x"
    with pytest.raises(ConfigError, match=r"worker\.max_batch"):
        config.with_overrides(worker={"max_batch": -1})


@pytest.mark.parametrize("raw", ["1.10", "0x1F", "no", "0123", "v2.0"])
def test_text_keys_are_taken_verbatim_from_the_environment(raw):
    assert load_config(REPO / "config.yaml", env={"WAKERU_MODEL__REVISION": raw}).model.revision == raw
    assert load_config(REPO / "config.yaml", env={"WAKERU_MODEL__ID": raw}).model.id == raw


def test_null_revision_from_the_environment():
    assert load_config(REPO / "config.yaml", env={"WAKERU_MODEL__REVISION": "null"}).model.revision is None


@pytest.mark.parametrize(
    "env",
    [{"WAKERU_WORKER__MAX_BATCH": "true"}, {"WAKERU_WORKER__MAX_WAIT_MS": "yes"}, {"WAKERU_IMAGES__MAX_BYTES": "1.5"}],
)
def test_numbers_are_strict(env):
    with pytest.raises(ConfigError, match=r"valid (integer|number)"):
        load_config(REPO / "config.yaml", env=env)


def test_redis_url_takes_tls_options_and_no_error_or_log_ever_shows_the_password():
    from wakeru.config import redact_url

    url = "rediss://:p@ss%2Fw0rd@cache.example.com:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    config = load_config(REPO / "config.yaml", env={"WAKERU_WORKER__REDIS_URL": url})
    assert config.worker.redis_url == url
    assert redact_url(url) == "rediss://…@cache.example.com:6380/2?ssl_cert_reqs=required&ssl_ca_certs=/etc/ca.pem"
    assert redact_url("redis://:a@b@host:1/0") == "redis://…@host:1/0"  # from the last "@": no "b" left over
    assert redact_url("redis://host:6379/0") == "redis://host:6379/0"
    for bad in ("http://:hunter2@host/0", "redis://:hunter2@host/0 extra", "redis://:hunter2@host/db"):
        with pytest.raises(ConfigError) as e:
            load_config(REPO / "config.yaml", env={"WAKERU_WORKER__REDIS_URL": bad})
        assert "hunter2" not in str(e.value) and "worker.redis_url" in str(e.value), e.value
    with pytest.raises(ConfigError) as e:
        load_config(
            REPO / "config.yaml",
            env={"WAKERU_STORAGE__URL": "postgresql://u:hunter2@h/db", "WAKERU_WORKER__MAX_BATCH": "0"},
        )
    assert "hunter2" not in str(e.value)


@pytest.mark.parametrize(
    "env, key, expected",
    [
        (
            {"WAKERU_ATTACHMENTS__ALLOWED_HOSTS": "cdn.example.com,media.example.com"},
            ("attachments", "allowed_hosts"),
            ("cdn.example.com", "media.example.com"),
        ),
        (
            {"WAKERU_ATTACHMENTS__ALLOWED_HOSTS": "[cdn.example.com, media.example.com]"},
            ("attachments", "allowed_hosts"),
            ("cdn.example.com", "media.example.com"),
        ),
        ({"WAKERU_DISCORD__MODERATOR_ROLE_IDS": "123, 456"}, ("discord", "moderator_role_ids"), (123, 456)),
        ({"WAKERU_DISCORD__SHARD_COUNT": "4", "WAKERU_DISCORD__SHARD_IDS": "0,1"}, ("discord", "shard_ids"), (0, 1)),
        ({"WAKERU_IMAGES__FORMATS": "jpg,png"}, ("images", "formats"), ("jpeg", "png")),
        ({"WAKERU_MODEL__TEMPLATES": "{}の写真,{}の画像"}, ("model", "templates"), ("{}の写真", "{}の画像")),
        ({"WAKERU_LABELS__DEFAULT": "犬,猫"}, ("labels", "default"), ("犬", "猫")),
    ],
)
def test_list_settings_take_plain_comma_separated_values_from_the_environment(env, key, expected):
    config = load_config(REPO / "config.yaml", env=env)
    assert getattr(getattr(config, key[0]), key[1]) == expected


def test_a_bad_list_from_the_environment_says_which_forms_work():
    with pytest.raises(ConfigError, match=r"discord\.shard_ids.*comma-separated text \(a,b\) or in YAML"):
        load_config(REPO / "config.yaml", env={"WAKERU_DISCORD__SHARD_COUNT": "4", "WAKERU_DISCORD__SHARD_IDS": "a,b"})


def test_removed_and_cross_section_settings_are_explained(tmp_path):
    with pytest.raises(ConfigError, match=r"discord\.low_confidence was removed.*model\.match_threshold"):
        load_config(REPO / "config.yaml", env={"WAKERU_DISCORD__LOW_CONFIDENCE": "0.4"})
    old = tmp_path / "old.yaml"
    old.write_text("discord:\n  low_confidence: 0.4\n")
    with pytest.raises(ConfigError, match=r"low_confidence: removed.*match_threshold"):
        load_config(old, env={})
    with pytest.raises(ConfigError, match=r"^worker\.queue_max_bytes \(1,000\) must be at least images\.max_bytes"):
        load_config(REPO / "config.yaml", env={"WAKERU_WORKER__QUEUE_MAX_BYTES": "1000"})
    with pytest.raises(ConfigError, match=r"model\.match_threshold"):
        load_config(REPO / "config.yaml", env={"WAKERU_MODEL__MATCH_THRESHOLD": "1.5"})
    assert (
        load_config(REPO / "config.yaml", env={"WAKERU_MODEL__MATCH_THRESHOLD": "0.05"}).model.match_threshold == 0.05
    )


def test_on_and_off_are_words_in_yaml_files_and_the_environment(tmp_path):
    """YAML 1.1 reads an unquoted on/off as a boolean; keys whose choices are words get the word."""
    path = tmp_path / "config.yaml"
    path.write_text("index:\n  default: on\ndiscord:\n  auto_classify: off\n")
    config = load_config(path=path, env={})
    assert config.index.default == "on" and config.discord.auto_classify == "off"
    config = load_config(path=path, env={"WAKERU_INDEX__DEFAULT": "off", "WAKERU_DISCORD__AUTO_CLASSIFY": "all"})
    assert config.index.default == "off" and config.discord.auto_classify == "all"
    with pytest.raises(ConfigError, match="index.default"):
        load_config(path=path, env={"WAKERU_INDEX__DEFAULT": "maybe"})
    with pytest.raises(ConfigError, match="backfill_days"):
        load_config(path=path, env={"WAKERU_INDEX__BACKFILL_DAYS": "400"})  # above backfill_max_days
