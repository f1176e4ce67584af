"""Messy lists and runs: BOMs, comments, skips that say where the video is listed, odd videos
that are reported, and training runs that stop instead of training on nothing."""
from __future__ import annotations

import pytest
import yaml
from helpers_video_corpus import VALID_CLIPS, write_clip

from vita_clip.data import (
    DataConfig,
    SamplingConfig,
    TransformConfig,
    VideoDataError,
    VideoDataset,
    VideoLoader,
    read_class_names,
    read_video_list,
)
from vita_clip.data.dataset import EmptyStepGuard, check_readable
from vita_clip.data.errors import SkippedSample

CONFIG = DataConfig(sampling=SamplingConfig(num_frames=4, stride=2), transform=TransformConfig(size=32),
                    backend="cpu")


def test_a_bom_does_not_eat_the_first_entry(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_bytes("a.mp4 0\r\nb.mp4 1\r\n".encode("utf-8-sig"))
    parsed = read_video_list(lst, num_classes=2)
    assert [(e.path, e.label, e.line) for e in parsed.entries] == [("a.mp4", 0, 1), ("b.mp4", 1, 2)]
    classes = tmp_path / "classes.csv"
    classes.write_bytes("id,name\n0,abseiling\n1,air drumming\n".encode("utf-8-sig"))
    assert read_class_names(classes) == ["abseiling", "air drumming"]


def test_hash_lines_are_comments(tmp_path):
    """... but not HMDB51's video names that begin with '#'."""
    lst = tmp_path / "list.txt"
    lst.write_text("# Kinetics-400 train split, path label\na.mp4 0\n   # indented comment\n#\n#no label here\n\n"
                   "clip#2.mp4 1\n#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi 1\n")
    parsed = read_video_list(lst, num_classes=2, on_error="raise")
    assert [(e.path, e.line) for e in parsed.entries] == [
        ("a.mp4", 2), ("clip#2.mp4", 7), ("#437_How_To_Ride_A_Bike_ride_bike_f_cm_np1_ba_med_1.avi", 8)]
    assert parsed.skipped == []


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    clip = next(c for c in VALID_CLIPS if c.name == "h264_bframes_vfr_faststart.mp4")
    good = write_clip(folder, clip)
    data = good.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: int(len(data) * 0.9)])  # used, but noted as odd
    short = next(c for c in VALID_CLIPS if c.name == "mjpeg.avi")
    write_clip(folder, type(short)(**{**short.__dict__, "name": "short.avi", "num_frames": 5}))
    return folder


def test_a_skipped_video_names_its_list_file_and_line(videos, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text(f"# header\n{videos / clip_name()} 0\nnot_there.mp4 1\n")
    dataset = VideoDataset(lst, data_root=tmp_path, train=False, config=CONFIG)
    loader = VideoLoader(dataset, batch_size=2)
    assert [b["index"].tolist() for b in loader] == [[0]]
    (skipped,) = loader.skipped
    assert skipped.listed_at == f"{lst}, line 3"
    assert str(skipped) == f"{tmp_path / 'not_there.mp4'}: file not found (listed in {lst}, line 3)"
    assert f"listed in {lst}, line 3" in loader.report()


def clip_name():
    return "h264_bframes_vfr_faststart.mp4"


def test_odd_videos_are_used_and_reported(videos, tmp_path):
    """A file cut at 90 % and a video shorter than the clip: both give samples and both are listed."""
    lst = tmp_path / "val.txt"
    lst.write_text(f"{clip_name()} 0\ncut.mp4 1\nshort.avi 0\n")
    dataset = VideoDataset(lst, data_root=videos, train=False, config=CONFIG)
    loader = VideoLoader(dataset, batch_size=3)
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2]]
    assert loader.skipped == []
    odd = {record.path: record for record in loader.odd}
    assert set(odd) == {str(videos / "cut.mp4"), str(videos / "short.avi")}
    assert "ends early" in odd[str(videos / "cut.mp4")].reason
    assert odd[str(videos / "cut.mp4")].listed_at == f"{lst}, line 2"
    assert "only 5 frames" in odd[str(videos / "short.avi")].reason and "repeated" in odd[str(videos / "short.avi")].reason
    assert "videos used but odd in epoch 0: 2" in loader.report()


def test_a_wrong_data_root_fails_at_the_start_with_one_message(videos, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text("".join(f"k400/video_{i}.mp4 {i % 2}\n" for i in range(30)))
    dataset = VideoDataset(lst, data_root=tmp_path / "wrong_root", train=True, config=CONFIG)
    with pytest.raises(VideoDataError) as info:
        check_readable(dataset)
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"{lst}: none of the 8 videos checked (of 30)")
    assert f"data_root={str(tmp_path / 'wrong_root')!r}" in message
    assert f"{tmp_path / 'wrong_root' / 'k400' / 'video_0.mp4'}: file not found" in message

    lst.write_text(f"{clip_name()} 0\n" + "".join(f"missing_{i}.mp4 1\n" for i in range(9)))
    assert check_readable(VideoDataset(lst, data_root=videos, train=True, config=CONFIG)) == 1


def test_empty_steps_stop_a_run_after_the_limit():
    guard = EmptyStepGuard(3)
    record = SkippedSample(index=4, path="x.mp4", reason="file not found", listed_at="train.txt, line 5")
    for step in range(2):
        guard.check(step, 0, [record])
    guard.check(2, 5, [])  # a step with samples starts the count again
    guard.check(3, 0, [record])
    guard.check(4, 0, [record])
    with pytest.raises(VideoDataError, match=r"3 consecutive steps \(up to step 6\) had no readable video "
                                             r"\(data.max_empty_steps=3\); last skipped: x.mp4: file not found"):
        guard.check(5, 0, [record])
    disabled = EmptyStepGuard(0)
    for step in range(50):
        disabled.check(step, 0, [])
    with pytest.raises(ValueError, match="max_empty_steps must be >= 0"):
        EmptyStepGuard(-1)


def run_config(tmp_path, train_list, data_root, **data):
    (tmp_path / "classes.txt").write_text("class a\nclass b\n")
    data.setdefault("classes", str(tmp_path / "classes.txt"))
    return {
        "model": {"name": "vita-clip-tiny", "pretrained": None},
        "data": {"train_list": str(train_list), "data_root": str(data_root), "num_workers": 0, "backend": "cpu",
                 "sampling": {"num_frames": 4, "stride": 2}, "transform": {"size": 32}, **data},
        "steps": 6, "batch_size": 2, "micro_batch_size": 2, "log_every": 1, "save_every": 0, "eval_every": 0,
        "output_dir": str(tmp_path / "run"), "seed": 0,
    }


def train_from(tmp_path, values):
    from vita_clip.engine.config import load_config
    from vita_clip.engine.trainer import train

    (tmp_path / "run.yaml").write_text(yaml.safe_dump(values))
    return train(load_config(tmp_path / "run.yaml"))


def test_a_training_run_with_a_wrong_data_root_stops_before_training(videos, tmp_path):
    lst = tmp_path / "train.txt"
    lst.write_text(f"{clip_name()} 0\nh264_other.mp4 1\n")
    with pytest.raises(VideoDataError, match="none of the 2 videos checked .* with data_root="):
        train_from(tmp_path, run_config(tmp_path, lst, tmp_path / "not_the_root"))
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_training_run_without_readable_samples_stops_after_max_empty_steps(videos, tmp_path, monkeypatch):
    """Videos that vanish after the start check (a disk unmounted mid-run): the steps have no
    sample, and the run stops at data.max_empty_steps instead of writing a model trained on nothing."""
    import vita_clip.engine.trainer as trainer

    monkeypatch.setattr(trainer, "check_readable", lambda dataset: None)
    lst = tmp_path / "train.txt"
    lst.write_text("gone_0.mp4 0\ngone_1.mp4 1\n")
    with pytest.raises(VideoDataError, match=r"2 consecutive steps \(up to step 2\) had no readable video"):
        train_from(tmp_path, run_config(tmp_path, lst, videos, max_empty_steps=2))
    assert not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_training_run_reports_its_odd_videos_with_list_file_and_line(videos, tmp_path):
    """A file cut short is trained on, with a warning, and the run's report lists it once."""
    import json

    lst = tmp_path / "train.txt"
    lst.write_text(f"{clip_name()} 0\ncut.mp4 1\n")
    values = run_config(tmp_path, lst, videos)
    values["steps"] = 2
    final = train_from(tmp_path, values)
    assert final["odd_train_videos"] == 1 and final["skipped_train_videos"] == 0
    assert json.loads((tmp_path / "run" / "results.json").read_text())["odd_train_videos"] == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert "training videos used but odd: 1" in log
    (line,) = [line for line in log.splitlines() if line.startswith(f"  - {videos / 'cut.mp4'}: ")]
    assert "ends early against its header" in line and line.endswith(f"(listed in {lst}, line 2)")


def test_a_step_without_readable_videos_is_skipped_not_stepped(videos, tmp_path, monkeypatch):
    """Below data.max_empty_steps an empty step makes no optimizer step (AdamW would still move
    the weights: weight decay and momentum); steps with data train as usual."""
    import vita_clip.engine.trainer as trainer

    stepped = []
    real_step = trainer.train_step
    monkeypatch.setattr(trainer, "train_step", lambda model, micro, *a, **k: stepped.append(len(micro)) or real_step(model, micro, *a, **k))
    lst = tmp_path / "train.txt"
    lst.write_text(f"{clip_name()} 0\ngone.mp4 1\n")
    values = run_config(tmp_path, lst, videos, max_empty_steps=3)
    values.update(steps=4, batch_size=1, micro_batch_size=1)
    final = train_from(tmp_path, values)
    # each step draws one of the two videos: the steps with the readable one train, the others are skipped
    assert 0 < len(stepped) < 4 and all(stepped) and final["skipped_train_videos"] == 4 - len(stepped)
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.count("no readable video in the batch; the step is skipped") == 4 - len(stepped)
