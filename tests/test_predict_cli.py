"""``python -m vita_clip.predict`` on a folder: a CSV row per good video, bad files reported,
reruns resume, settings guarded."""
from __future__ import annotations

import csv
import json

import pytest

from helpers import exit_code, save_tiny_checkpoint, write_sliding_clip
from vita_clip.inference import expand_video_paths, predict
from vita_clip.precision import resolve_precision
from vita_clip.predict import main as predict_main

CLASSES = ["left", "right", "up", "down"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("videos")
    for i in range(5):
        write_sliding_clip(root / ("a" if i < 3 else "b/c") / f"clip{i}.webm", seed=i)
    (root / "b" / "broken.webm").write_bytes(b"\x1a\x45\xdf\xa3" + b"\x00" * 200)  # an EBML header, then nothing
    (root / "notes.txt").write_text("not a video")
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "model.pt", CLASSES)


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_folder_to_csv_with_a_broken_file_then_resume(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    args = [str(folder), "--checkpoint", str(checkpoint), "--output", str(out), "--batch-size", "2",
            "--workers", "1", "--topk", "3", "--views", "2x1"]
    assert predict_main(args) == 0
    err = capsys.readouterr().err
    rows = read_rows(out)
    assert sorted(r["video"].rsplit("/", 1)[1] for r in rows) == [f"clip{i}.webm" for i in range(5)]
    assert "broken.webm" in err and "videos skipped (unreadable; rerun retries them): 1" in err
    assert "4 classes (the checkpoint's)" in err and "text features: the model's own prompts" in err
    assert "2x1 views" in err and f"{resolve_precision('auto', 'cpu')} on cpu" in err  # auto, resolved on this CPU
    assert all(r["top1"] in CLASSES and 1 >= float(r["p1"]) >= float(r["p2"]) >= float(r["p3"]) > 0 for r in rows)

    # the file agrees with the Python API run one video at a time
    single = {p.video: p for p in predict([r["video"] for r in rows], checkpoint=checkpoint, topk=3, views=(2, 1),
                                          batch_size=1)}
    for r in rows:
        assert r["top1"] == single[r["video"]].top[0][0]
        assert float(r["p1"]) == pytest.approx(single[r["video"]].top[0][1], abs=2e-6)

    # an interrupted run: the last row half written; a new video appeared meanwhile
    text = out.read_text()
    out.write_text(text[: text.rstrip("\n").rfind("\n") + 1] + rows[-1]["video"][:5])
    write_sliding_clip(folder / "b" / "clip_new.webm", seed=9)
    try:
        assert predict_main(args) == 0
    finally:
        (folder / "b" / "clip_new.webm").unlink()
    err = capsys.readouterr().err
    assert "4 of 7 videos are already in" in err  # 4 complete rows kept; the cut one, the new one and the broken one run
    again = read_rows(out)
    assert len(again) == 6 and len({r["video"] for r in again}) == 6
    assert "2 videos predicted" in err

    # --on-error raise stops at the broken file, naming it, and keeps the rows written before it
    assert exit_code(predict_main, args + ["--on-error", "raise"]) == 2
    assert "broken.webm" in capsys.readouterr().err and len(read_rows(out)) == 6

    # other settings than the file's: refused, not mixed
    assert exit_code(predict_main, args[:-4] + ["--topk", "2", "--views", "2x1"]) == 2
    assert "topk differ" in capsys.readouterr().err


def test_jsonl_class_names_and_templates_line(folder, checkpoint, tmp_path, capsys):
    out = tmp_path / "preds.jsonl"
    assert predict_main([str(folder / "a" / "*.webm"), "--checkpoint", str(checkpoint), "--classes", "a red ball,a cat",
                         "--output", str(out), "--workers", "0"]) == 0
    err = capsys.readouterr().err
    assert "class-specific prompts cannot describe these classes" in err  # the fallback is said
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(lines) == 3 and all(len(x["top"]) == 2 for x in lines)
    assert all(sum(t["probability"] for t in x["top"]) == pytest.approx(1, abs=1e-5) for x in lines)


def test_nothing_readable_fails_once(tmp_path, capsys):
    bad = tmp_path / "x"
    bad.mkdir()
    for i in range(3):
        (bad / f"bad{i}.mp4").write_bytes(b"\x00" * 64)
    assert exit_code(predict_main, [str(bad), "--model", "vifi-clip-tiny", "--classes", "a,b", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "no other video could be read: 3 of 3 skipped" in err
    assert exit_code(predict_main, [str(tmp_path / "none*.mp4"), "--model", "vifi-clip-tiny", "--classes", "a,b"]) == 2
    assert "the pattern matches no file" in capsys.readouterr().err
    assert exit_code(predict_main, [str(bad / "bad0.mp4"), "--model", "vifi-clip-tiny"]) == 2
    assert "give --classes" in capsys.readouterr().err


def test_expand_video_paths(folder):
    found = expand_video_paths([str(folder), str(folder / "a" / "clip0.webm")])
    assert [p.rsplit("/", 1)[1] for p in found] == ["clip0.webm", "clip1.webm", "clip2.webm", "broken.webm",
                                                     "clip3.webm", "clip4.webm"]


def test_reduced_precision_agrees_with_fp32(folder, checkpoint):
    videos = expand_video_paths([str(folder / "a")])
    reference = predict(videos, checkpoint=checkpoint, topk=4, precision="fp32")
    for precision in ("bf16", "fp16"):
        lower = predict(videos, checkpoint=checkpoint, topk=4, precision=precision)
        for a, b in zip(reference, lower):
            ref, low = dict(a.top), dict(b.top)
            assert all(abs(ref[c] - low[c]) < 2e-2 for c in CLASSES), (precision, a.top, b.top)
    with pytest.raises(ValueError, match="--precision must be one of"):
        predict(videos, checkpoint=checkpoint, precision="int8")
