"""Config loading: defaults, YAML, overrides, and one-line errors for bad keys and values."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmd2v2.config import ConfigError, config_to_dict, dump_config, load_config

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def test_demo_config_loads_with_overrides() -> None:
    config = load_config(
        DEMO,
        [
            "loss.kd_kind=contrastive",
            "optim.betas=[0.9, 0.95]",
            "trainer.max_steps=7",
            "model.image.config.hidden_size=64",
        ],
    )
    assert config.loss.kd_kind == "contrastive"
    assert config.optim.betas == [0.9, 0.95]
    assert config.trainer.max_steps == 7
    assert config.model.image.config["hidden_size"] == 64
    assert config.model.image.config["patch_size"] == 16  # the rest of the YAML mapping is kept
    assert config.model.text.family == "data2vec-text"


def test_exponent_floats_read_as_numbers(tmp_path: Path) -> None:
    # PyYAML alone reads `2e-3` as a string; configs and overrides follow YAML 1.2 instead.
    path = tmp_path / "c.yaml"
    path.write_text("optim: {lr: 5e-4}\nmodel:\n  image:\n    config: {layer_norm_eps: 1E-6}\n")
    config = load_config(path, ["loss.kd_weight=2e-1"])
    assert config.optim.lr == 5e-4 and config.loss.kd_weight == 0.2
    assert config.model.image.config["layer_norm_eps"] == 1e-6


def test_defaults_without_file() -> None:
    config = load_config(None)
    assert config.loss.init_temperature == 0.07 and config.loss.max_logit_scale == 100.0
    assert config.loss.contrastive_memory_bank == 0  # unstable in the thesis: off by default
    assert config.loss.kd_bank_size == 65536


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.imgae.family=vit", "unknown config key 'model.imgae'"),
        ("trainer.max_step=3", "unknown config key 'trainer.max_step'"),
        ("trainer.max_steps=many", "config key 'trainer.max_steps': got 'many', expected int"),
        ("loss.kd_kind=huber", "config key 'loss.kd_kind': got 'huber', expected one of"),
        ("optim.lr=fast", "config key 'optim.lr': got 'fast', expected a number"),
        ("trainer", "expected key.sub=value"),
        ("model.image.config={a: [1, 2}", "override 'model.image.config={a: [1, 2}': the value is not valid YAML"),
    ],
)
def test_bad_keys_and_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")) as info:
        load_config(DEMO, [override])
    assert "\n" not in str(info.value)


def test_unknown_key_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("trainer:\n  epochz: 3\n")
    with pytest.raises(ConfigError, match="unknown config key 'trainer.epochz' \\(expected one of: .*epochs"):
        load_config(path)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")


def test_dump_round_trip(tmp_path: Path) -> None:
    config = load_config(DEMO, ["trainer.seed=5"])
    dump_config(config, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert config_to_dict(again) == config_to_dict(config)
    assert yaml.safe_load((tmp_path / "c.yaml").read_text())["trainer"]["seed"] == 5
