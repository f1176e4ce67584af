"""The engine end to end on generated videos: train -> checkpoint -> eval -> predict, and resume after SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vita_clip import load_model
from vita_clip.demo.dataset import make_demo_dataset
from vita_clip.engine.config import load_config
from vita_clip.engine.trainer import train
from vita_clip.eval import main as eval_main
from vita_clip.inference import predict
from vita_clip.predict import main as predict_main


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(root, train_per_class=2, val_per_class=1, size=32, num_frames=16, workers=1)


def run_config(demo, out: Path, **extra) -> dict:
    values = {
        "model": {"name": "vita-clip-tiny", "pretrained": None},
        "data": {"train_list": str(demo.train_list), "val_list": str(demo.val_list), "data_root": str(demo.root),
                 "classes": str(demo.class_file), "num_workers": 0, "backend": "cpu",
                 "sampling": {"num_frames": 4, "stride": 3}, "transform": {"size": 32, "rand_augment_ops": 1}},
        "steps": 4, "batch_size": 8, "micro_batch_size": 3, "log_every": 2, "save_every": 2, "eval_every": 2,
        "optim": {"lr": 1e-3, "warmup_steps": 1}, "eval_views": [2, 1], "output_dir": str(out), "seed": 3,
    }
    for key, value in extra.items():
        values[key] = value
    return values


def test_train_checkpoint_eval_predict(demo, tmp_path, capsys):
    out = tmp_path / "run"
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run_config(demo, out)))
    result = train(load_config(tmp_path / "run.yaml"))
    assert result["val"]["videos"] == 10 and 0 <= result["val"]["top1"] <= 100
    assert json.loads((out / "results.json").read_text()) == result
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-0000002", "checkpoint-0000004"]
    assert (out / "curves.png").stat().st_size > 0 and (out / "train.log").read_text()
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("step,split,loss") and sum(",train," in r for r in rows) == 2
    assert sum(",val," in r for r in rows) == 2  # step 2, then the final evaluation
    state = torch.load(out / "checkpoint-0000004" / "state.pt", weights_only=True)
    assert state["step"] == 4 and state["run_config"]["steps"] == 4

    # the final model and the step-4 checkpoint are the same weights, and eval reproduces the run's number
    model = load_model(out / "model.pt")
    folder = load_model(out / "checkpoint-0000004")
    for (name, a), b in zip(model.state_dict().items(), folder.state_dict().values()):
        assert torch.equal(a, b), name
    assert eval_main(["--checkpoint", str(out / "model.pt"), "--val-list", str(demo.val_list), "--data-root",
                      str(demo.root), "--views", "2x1", "--workers", "0", "--output", str(tmp_path / "eval.json"),
                      "--precision", "fp32"]) == 0  # the run's precision (auto may be bf16 on this CPU)
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    assert evaluated["summary"]["top1"] == pytest.approx(result["val"]["top1"])

    video = demo.root / demo.val_list.read_text().split()[0]
    predictions = predict([video], list(demo.classes), checkpoint=out / "model.pt", topk=3)
    assert len(predictions) == 1 and len(predictions[0].top) == 3
    probs = [p for _, p in predictions[0].top]
    assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
    # new class names: the class-specific prompts cannot describe them, templates are used
    zero_shot = predict([video], ["a red ball", "a blue square"], checkpoint=out / "model.pt")
    assert sum(p for _, p in zero_shot[0].top) == pytest.approx(1.0, abs=1e-5)
    capsys.readouterr()
    assert predict_main([str(video), "--classes", "moving left,moving right", "--checkpoint", str(out / "model.pt"),
                         "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["top"][0]["class"] in ("moving left", "moving right")


def test_predict_reports_unreadable_videos(demo, tmp_path, capsys):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00" * 100)
    with pytest.raises(SystemExit) as exit_info:
        predict_main([str(bad), "--classes", "a,b", "--model", "vifi-clip-tiny"])
    assert exit_info.value.code == 2 and "broken.mp4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a user error: one line, exit code 2 (vita_clip.cli)
        predict_main([str(tmp_path / "missing.mp4"), "--classes", "a,b", "--model", "vifi-clip-tiny"])
    assert exit_info.value.code == 2
    assert "missing.mp4" in capsys.readouterr().err


def test_bad_runs_fail_clearly(demo, tmp_path):
    values = run_config(demo, tmp_path / "r")
    values["data"]["train_list"] = str(tmp_path / "nope.txt")
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(FileNotFoundError, match="data.train_list: .*nope.txt. is neither a file"):
        train(load_config(tmp_path / "a.yaml"))
    values = run_config(demo, tmp_path / "r")
    values["data"]["transform"]["size"] = 64
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(ValueError, match="data.transform.size=64 but the model"):
        train(load_config(tmp_path / "b.yaml"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "checkpoint-0000002").mkdir()
    with pytest.raises(Exception, match="not a training checkpoint"):
        load_model(tmp_path / "empty" / "checkpoint-0000002")


def test_killed_run_resumes_to_the_same_weights(demo, tmp_path):
    """SIGKILL after the first checkpoint, resume, and end where an uninterrupted run ends."""
    steps = 10
    for name in ("straight", "killed"):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(
            run_config(demo, tmp_path / name, steps=steps, eval_every=0, log_every=1)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "vita_clip.train", "--config"]
    subprocess.run(command + [str(tmp_path / "straight.yaml")], env=env, check=True, capture_output=True, timeout=600)

    proc = subprocess.Popen(command + [str(tmp_path / "killed.yaml")], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    first = tmp_path / "killed" / "checkpoint-0000002"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the run ended before its first checkpoint"
    assert not (tmp_path / "killed" / f"checkpoint-{steps:07d}").exists(), "killed too late to test a resume"
    subprocess.run(command + [str(tmp_path / "killed.yaml")], env=env, check=True, capture_output=True, timeout=600)
    log = (tmp_path / "killed" / "train.log").read_text()
    assert "resumed from" in log

    final = f"checkpoint-{steps:07d}/model.safetensors"
    a, b = load_file(tmp_path / "straight" / final), load_file(tmp_path / "killed" / final)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
