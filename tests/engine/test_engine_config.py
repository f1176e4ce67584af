"""Run configs: YAML files, dotted overrides, and errors that name the key."""
from __future__ import annotations

import pytest

from vita_clip import precision
from vita_clip.config_builder import config_to_dict
from vita_clip.engine.config import TrainConfig, load_config
from vita_clip.train import CONFIG_DIR, config_path


def test_defaults_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("steps: 100\noptim:\n  lr: 1.0e-3\ndata:\n  sampling:\n    num_frames: 16\n")
    config = load_config(path, ["optim.warmup_steps=10", "data.transform.size=112", "model.options={train_cls_proj: false}",
                                "eval_views=[4, 3]"])
    assert isinstance(config, TrainConfig)
    assert config.steps == 100 and config.optim.lr == 1e-3 and config.optim.warmup_steps == 10
    assert config.data.sampling.num_frames == 16 and config.data.transform.size == 112
    assert config.model.options == {"train_cls_proj": False} and config.eval_views == (4, 3)
    again = load_config(None, [f"{k}={v}" for k, v in [("steps", 100)]])
    assert again.steps == 100 and config_to_dict(again)["optim"]["betas"] == [0.9, 0.999]


def test_base_configs_are_merged(tmp_path):
    (tmp_path / "base.yaml").write_text("steps: 50\noptim:\n  lr: 0.1\n  weight_decay: 0.2\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\noptim:\n  lr: 0.01\n")
    config = load_config(tmp_path / "child.yaml")
    assert config.steps == 50 and config.optim.lr == 0.01 and config.optim.weight_decay == 0.2


@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key 'optim.lrr'"),
    ("steps=many", "steps: expected an integer, got 'many'"),
    ("optim.lr=-1", "lr must be > 0"),
    ("precision=fp8", "precision: expected one of"),
    ("data.sampling.mode=random", "sampling mode must be one of"),
    ("eval_views=[1]", "eval_views: expected 2 values"),
    ("compile=yes please", "compile: expected true or false"),
    ("steps", "expected key=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("steps: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "unknown.yaml").write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ValueError, match=r"unknown.yaml: unknown config key 'optim.momentum'"):
        load_config(tmp_path / "unknown.yaml")


@pytest.mark.parametrize("name", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_shipped_config_loads(name):
    config = load_config(config_path(name))
    assert config.output_dir and config.steps >= 1


def test_training_precision_defaults_to_auto_and_the_demo_pins_fp32(monkeypatch):
    """``auto`` by default (bf16 on a GPU, and on a CPU with native bf16: a B/16 training step
    took 0.39x the time of fp32 there); the demo's recorded numbers are of an fp32 run."""
    assert TrainConfig().precision == "auto" and load_config(None).precision == "auto"
    assert load_config(config_path("demo")).precision == "fp32"
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision(TrainConfig().precision, "cpu") == "bf16"
