import pytest

from brianft.config import ConfigError, dump_config, load_config, parse_override


def test_defaults_without_file():
    config = load_config()
    assert config.data.curated is True
    assert config.data.synthetic_train == 2000


def test_yaml_file_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  synthetic_train: 10\n  seed: 3\n")
    config = load_config(path, ["data.seed=7", "data.files=[a.jsonl, b.csv]"])
    assert config.data.synthetic_train == 10
    assert config.data.seed == 7
    assert [p.name for p in config.data.files] == ["a.jsonl", "b.csv"]
    assert "synthetic_train: 10" in dump_config(config)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.synthetic_train=-1"], "data.synthetic_train"),
        (["data.unknown=1"], "data.unknown"),
        (["data.validation_fraction=0.45", "data.test_fraction=0.45"], "at least 10%"),
        (["data.seed=abc"], "data.seed"),
        (["nonsense"], "key=value"),
        (["data=3"], "data"),
    ],
)
def test_bad_values_are_clear_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_parse_override_types():
    assert parse_override("a.b=0.25") == ("a.b", 0.25)
    assert load_config(None, ["data.test_fraction=2.5e-1"]).data.test_fraction == 0.25
    assert parse_override("a=true") == ("a", True)
    assert parse_override("a=") == ("a", "")


def test_a_dumped_config_keeps_no_api_key_and_a_masked_key_is_refused(tmp_path):
    """A run's config.yaml never holds the key; one written by an older version holds the mask,
    which must not become the server's key (the mask is public)."""
    config = load_config(None, ["serve.api_key=supersecret-123"])
    dumped = dump_config(config)
    assert "supersecret" not in dumped and "*****" not in dumped
    path = tmp_path / "config.yaml"
    path.write_text(dumped)
    assert load_config(path).serve.api_key is None  # serve then reads BRIANFT_API_KEY
    path.write_text(dumped.replace("api_key: null", "api_key: '**********'"))
    with pytest.raises(ConfigError, match="masked placeholder"):
        load_config(path)
