"""Every user error of ``train``, ``eval`` and ``predict``: one line on stderr naming the key or
file, exit code 2, no traceback (``--debug`` shows it); numbers as a user types them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from vita_clip.config_builder import apply_overrides, read_yaml
from vita_clip.engine.config import load_config
from vita_clip.eval import main as eval_main
from vita_clip.predict import main as predict_main
from vita_clip.train import main as train_main


@pytest.mark.parametrize("typed,value", [("1e-3", 1e-3), ("5e-5", 5e-5), ("1_000", 1000), ("-2E+4", -2e4),
                                         ("0.5", 0.5), ("3", 3), ("lr", "lr")])
def test_overrides_read_numbers_as_typed(typed, value):
    assert apply_overrides({}, [f"x={typed}"])["x"] == value
    assert type(apply_overrides({}, [f"x={typed}"])["x"]) is type(value)


def test_help_example_and_yaml_files_take_exponents(tmp_path):
    assert load_config(None, ["optim.lr=1e-3", "steps=1_000"]).optim.lr == 1e-3
    (tmp_path / "run.yaml").write_text("optim: {lr: 5e-5}\n")
    assert read_yaml(tmp_path / "run.yaml")["optim"]["lr"] == 5e-5


def user_error(main, argv, capsys) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line
    return err


def test_train_errors_are_one_line(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "run")]
    assert "optim.lr: expected a number, got 'fast'" in user_error(train_main, [*out, "optim.lr=fast"], capsys)
    err = user_error(train_main, [*out, "data.transform.flip=2", "data.num_workers=-1"], capsys)
    assert "transform.flip" in err
    err = user_error(train_main, [*out, "data.demo=false", f"data.train_list={tmp_path / 'missing.txt'}"], capsys)
    assert "data.train_list" in err and "missing.txt" in err
    (tmp_path / "train.txt").write_text("a.mp4 0\n")
    (tmp_path / "classes.txt").write_text("a\nb\n")
    err = user_error(train_main, [*out, "data.demo=false", f"data.train_list={tmp_path / 'train.txt'}",
                                  f"data.classes={tmp_path / 'classes.txt'}", "model.name=vita-clip-tiny",
                                  "model.pretrained=null", "model.options.num_framez=4"], capsys)
    assert "num_framez" in err
    assert "--config 'nope'" in user_error(train_main, ["--config", "nope"], capsys)


def test_eval_and_predict_errors_are_one_line(tmp_path, capsys):
    err = user_error(eval_main, ["--checkpoint", str(tmp_path / "nowhere.pt")], capsys)
    assert "nowhere.pt" in err
    assert "--views" in user_error(eval_main, ["--model", "vifi-clip-tiny", "--views", "three"], capsys)
    err = user_error(predict_main, [str(tmp_path / "missing.mp4"), "--classes", "a,b", "--model", "vifi-clip-tiny"],
                     capsys)
    assert "missing.mp4" in err


def run_cli(args, tmp_path, **env):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path), **env}
    return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)


def test_no_traceback_unless_debug_and_offline_weights_name_the_flag(tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"\0" * 100)
    args = ["vita_clip.predict", str(video), "--classes", "a,b", "--model", "vifi-clip-b16"]
    plain = run_cli(args, tmp_path, HF_HUB_OFFLINE="1")
    assert plain.returncode == 2, plain.stderr[-2000:]
    lines = plain.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in plain.stderr, plain.stderr[-2000:]
    assert "offline" in lines[0] and "--pretrained /path/to/checkpoint" in lines[0]
    debug = run_cli([*args, "--debug"], tmp_path, HF_HUB_OFFLINE="1")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "PretrainedWeightsUnavailable" in debug.stderr
