"""Runs that do what they record: a changed config is not resumed silently, a corrupt newest
checkpoint falls back to the previous one, and the same seed gives the same run."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vita_clip import precision
from vita_clip.config_builder import build, config_to_dict
from vita_clip.demo.dataset import make_demo_dataset
from vita_clip.engine import trainer
from vita_clip.engine.config import TrainConfig
from vita_clip.engine.trainer import train
from vita_clip.errors import ResumeMismatchError
from vita_clip.train import main as train_main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(root, train_per_class=1, val_per_class=1, size=32, num_frames=12, workers=1)


def run_config(demo, out: Path, **top) -> TrainConfig:
    values = {
        "model": {"name": "vita-clip-tiny", "pretrained": None},
        "data": {"train_list": str(demo.train_list), "val_list": str(demo.val_list), "data_root": str(demo.root),
                 "classes": str(demo.class_file), "num_workers": 0, "backend": "cpu",
                 "sampling": {"num_frames": 4, "stride": 2}, "transform": {"size": 32, "rand_augment_ops": 1}},
        "steps": 4, "batch_size": 4, "micro_batch_size": 4, "log_every": 2, "save_every": 2,
        "optim": {"lr": 1e-3}, "eval_views": [1, 1], "output_dir": str(out), "seed": 7, **top,
    }
    return build(TrainConfig, values)


def final_weights(out: Path) -> dict:
    return load_file(str(out / "checkpoint-0000004" / "model.safetensors"))


def test_changed_settings_are_refused_and_force_applies_them(demo, tmp_path):
    out = tmp_path / "run"
    train(run_config(demo, out))
    config_yaml = (out / "config.yaml").read_text()
    changed = run_config(demo, out, steps=8, optim={"lr": 2e-3})
    with pytest.raises(ResumeMismatchError) as info:
        train(changed)
    message = str(info.value)
    assert "steps: 4 -> 8" in message and "optim.lr: 0.001 -> 0.002" in message and "--resume force" in message
    assert (out / "config.yaml").read_text() == config_yaml  # nothing recorded for the refused run
    # bookkeeping keys do not count as a change
    train(run_config(demo, out, log_every=1, keep_checkpoints=3))
    result = train(changed, resume="force")
    assert result["resumed_with_changes"] == ["optim.lr: 0.001 -> 0.002", "steps: 4 -> 8"]
    state = torch.load(out / "checkpoint-0000008" / "state.pt", weights_only=True)
    assert state["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(2e-3)  # what config.yaml says
    assert state["run_config"]["optim"]["lr"] == pytest.approx(2e-3)


def test_train_precision_flag_is_what_runs_is_recorded_and_resumes_only_unchanged(demo, tmp_path, monkeypatch,
                                                                                   capsys):
    out = tmp_path / "run"
    values = config_to_dict(run_config(demo, out, steps=2, save_every=1))
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    used = []

    def recording_step(*args, **kwargs):
        used.append(args[4])  # train_step(model, micro, optimizer, scaler, precision, ...)
        return real_step(*args, **kwargs)

    real_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", recording_step)
    argv = ["--config", str(tmp_path / "run.yaml")]
    assert train_main([*argv, "--precision", "bf16"]) == 0
    assert used == ["bf16", "bf16"]
    assert yaml.safe_load((out / "config.yaml").read_text())["precision"] == "bf16"
    for step in (1, 2):
        state = torch.load(out / f"checkpoint-{step:07d}" / "state.pt", weights_only=True)
        assert state["run_config"]["precision"] == "bf16"

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        train_main([*argv, "--precision", "fp32"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "precision: 'bf16' -> 'fp32'" in err and "--resume force" in err
    assert used == ["bf16", "bf16"]  # nothing ran

    # auto is resolved on the device before the comparison: it resumes the run where it means bf16, not elsewhere
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(SystemExit):
        train_main([*argv, "--precision", "auto"])
    assert "precision: 'bf16' -> 'fp32'" in capsys.readouterr().err
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert train_main([*argv, "--precision", "auto"]) == 0  # the finished run, resumed: no step left
    assert used == ["bf16", "bf16"]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(demo, tmp_path):
    reference = tmp_path / "reference"
    train(run_config(demo, reference))
    out = tmp_path / "run"
    train(run_config(demo, out))
    newest = out / "checkpoint-0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated
    (out / "model.pt").unlink()
    train(run_config(demo, out))
    log = (out / "train.log").read_text()
    assert "checkpoint-0000004/model.safetensors: does not match its checksum" in log
    assert "trying the previous checkpoint" in log and "resumed from" in log and "checkpoint-0000002 (step 2" in log
    for key, value in final_weights(reference).items():  # resumed at step 2: bit-identical to the run without a crash
        assert torch.equal(final_weights(out)[key], value), key


def test_bit_flip_in_a_training_checkpoint_is_caught_by_its_checksum(demo, tmp_path):
    out = tmp_path / "run"
    train(run_config(demo, out))
    state = out / "checkpoint-0000004" / "state.pt"
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0x01
    state.write_bytes(bytes(data))
    train(run_config(demo, out))
    assert "state.pt: does not match its checksum" in (out / "train.log").read_text()


def test_same_seed_same_run_whatever_ran_before(demo, tmp_path, monkeypatch):
    first = train(run_config(demo, tmp_path / "a"))

    def prepare_and_draw(*args):
        result = real_prepare(*args)
        torch.rand(1000)  # what generating the demo data or pretraining its backbone on a first run does
        return result

    real_prepare = trainer.prepare_data
    monkeypatch.setattr(trainer, "prepare_data", prepare_and_draw)
    second = train(run_config(demo, tmp_path / "b"))
    a, b = final_weights(tmp_path / "a"), final_weights(tmp_path / "b")
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert first["val"] == second["val"]
    recorded = json.loads((tmp_path / "b" / "results.json").read_text())["determinism"]
    assert recorded["seed"] == 7 and recorded["deterministic_algorithms"] is True
    other = train(run_config(demo, tmp_path / "c", seed=8))
    c = final_weights(tmp_path / "c")
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the seed matters, so the check above can fail
    shutil.rmtree(tmp_path / "c")
    assert other["steps"] == 4
