"""VL configs: the shipped YAML files and every method preset resolve; bad keys and values are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from mmd2v2.config import ConfigError
from mmd2v2.vl.config import load_vl_config
from mmd2v2.vl.methods import METHODS, method_overrides
from mmd2v2.vl.protocols import with_overrides

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("vl_*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_resolve(path: Path) -> None:
    cfg = load_vl_config(path)
    assert cfg.distill.weight == 0.05 and cfg.distill.num_tokens == 2


def test_method_presets_switch_the_table_s3_components() -> None:
    teachers = ["teachers.vision.kind=mmd2v2", "teachers.vision.pretrained=export", "teachers.text.kind=hf"]
    base = load_vl_config(None, [*teachers, "distill.confidence_weighting=true", "adaptive.enabled=true"])
    resolved = {name: with_overrides(base, method_overrides(name)) for name in METHODS}
    assert not any(
        [
            resolved["baseline"].distill.vision,
            resolved["baseline"].distill.text,
            resolved["baseline"].distill.confidence_weighting,
            resolved["baseline"].adaptive.enabled,
        ]
    )
    assert resolved["baseline"].distill.token_selection == "none"
    assert resolved["md"].distill.vision and resolved["md"].distill.text and not resolved["md"].adaptive.enabled
    assert resolved["md_ts_random"].distill.token_selection == "random"
    mad = resolved["mad"]
    assert (mad.distill.token_selection, mad.distill.confidence_weighting, mad.adaptive.enabled) == (
        "adaptive",
        True,
        True,
    )
    assert resolved["af_no_distill"].adaptive.enabled and not resolved["af_no_distill"].adaptive.distill
    with pytest.raises(ValueError, match="unknown method 'mda'"):
        method_overrides("mda")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["distill.num_tokens=0"], "'distill.num_tokens': got 0"),
        (["distill.token_selection=topk"], "'distill.token_selection': got 'topk'"),
        (["protocol.settings=[few_shot]"], "'protocol.settings': got 'few_shot'"),
        (["teachers.text.kind=clip"], "'teachers.text.kind': got 'clip'"),
        (["teachers.zero_shot.kind=hf", "teachers.zero_shot.family=beit"], "'teachers.zero_shot.family': got 'beit'"),
        (["teachers.zero_shot_prompt=qa"], "'teachers.zero_shot_prompt': got 'qa'"),
        (["distill.l1=l2"], "'distill.l1': got 'l2'"),
    ],
)
def test_bad_values_are_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_vl_config(None, overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["distill.vision=true"],
            "config keys 'distill.vision' and 'teachers.vision.kind': distill.vision=True needs a "
            "vision teacher, but teachers.vision.kind is none",
        ),
        (["distill.text=true"], "config keys 'distill.text' and 'teachers.text.kind'"),
        (
            ["teachers.text.kind=hf", "distill.token_selection=adaptive"],
            "config keys 'distill.token_selection' and 'teachers.vision.kind'",
        ),
        (
            ["teachers.vision.kind=hf", "distill.token_selection=random"],
            "config keys 'distill.token_selection' and 'teachers.text.kind'",
        ),
        (
            ["teachers.vision.kind=hf", "teachers.vision.family=beit", "distill.confidence_weighting=true"],
            "config keys 'distill.confidence_weighting' and 'teachers.zero_shot': confidence weighting needs zero-shot "
            "logits, but no teacher gives them",
        ),
    ],
)
def test_a_feature_no_teacher_serves_is_refused_naming_both_keys(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_vl_config(None, overrides)


@pytest.mark.parametrize(
    ("overrides", "source"),
    [
        (
            ["teachers.vision.kind=hf", "teachers.vision.family=clip", "teachers.vision.pretrained=clip"],
            "teachers.vision",
        ),
        (["teachers.text.kind=mmd2v2", "teachers.text.pretrained=export"], "teachers.text"),
        (
            ["teachers.vision.kind=mmd2v2", "teachers.zero_shot.kind=hf", "teachers.zero_shot.pretrained=clip"],
            "teachers.zero_shot",
        ),
    ],
)
def test_confidence_weighting_takes_its_logits_from_clip_or_an_mmd2v2_export(overrides: list[str], source: str) -> None:
    from mmd2v2.vl.config import logits_teacher

    cfg = load_vl_config(None, [*overrides, "distill.confidence_weighting=true"])
    found = logits_teacher(cfg.teachers)
    assert found is not None and found[0] == source


@pytest.mark.parametrize("gpu", [True, False])
def test_trainer_device_auto_is_the_default_and_picks_cuda_when_torch_sees_a_gpu(
    monkeypatch: pytest.MonkeyPatch, gpu: bool
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    expected = "cuda" if gpu else "cpu"
    assert load_vl_config(None).trainer.device == expected
    assert load_vl_config(None, ["trainer.device=auto"]).trainer.device == expected
    for device in ("cpu", "cuda", "cuda:1"):  # explicit devices stay as they are
        assert load_vl_config(None, [f"trainer.device={device}"]).trainer.device == device


@pytest.mark.parametrize("device", ["gpu", "cuda:-1", "cuda:x", "CPU", ""])
def test_an_invalid_trainer_device_is_refused_naming_the_key(device: str) -> None:
    with pytest.raises(ConfigError, match=r"^config key 'trainer.device': got .*expected auto, cpu, cuda or cuda:N$"):
        load_vl_config(None, [f"trainer.device={device}"])
