"""The generated demo dataset: content, determinism, reuse, the command line."""
import os

import numpy as np
import pytest

from vita_clip.data import (
    DataConfig,
    TransformConfig,
    VideoDataset,
    VideoLoader,
    VideoReader,
    read_class_names,
    read_frames,
    read_video_list,
)
from vita_clip.demo.dataset import DEMO_CLASSES, main, make_demo_dataset, render_clip

TINY = dict(train_per_class=1, val_per_class=1, size=32, num_frames=8, workers=1)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo") / "out", seed=7, **TINY)


def test_layout_lists_and_classes(demo):
    assert len(DEMO_CLASSES) >= 8 and read_class_names(demo.class_file) == list(DEMO_CLASSES)
    for list_file, split in ((demo.train_list, "train"), (demo.val_list, "val")):
        entries = read_video_list(list_file, demo.root, num_classes=len(DEMO_CLASSES)).entries
        assert [e.label for e in entries] == list(range(len(DEMO_CLASSES)))
        assert all(f"/{split}_0000.webm" in e.path for e in entries)
        for e in entries:
            with VideoReader(e.path) as reader:
                assert (reader.index.codec, reader.num_frames, reader.index.width) == ("vp9", 8, 32)
    assert demo.sampling.window <= demo.num_frames


def test_videos_show_the_rendered_clips(demo):
    entry = read_video_list(demo.train_list, demo.root).entries[4]  # "rotating clockwise"
    rendered = render_clip(4, np.random.default_rng(np.random.SeedSequence((7, 4, False, 0))), 32, 8)
    other_clip = render_clip(4, np.random.default_rng(np.random.SeedSequence((7, 4, False, 1))), 32, 8)
    decoded = read_frames(entry.path, range(8)).astype(int)
    error = np.abs(decoded - rendered).mean()
    assert error < 6 and error < np.abs(decoded - other_clip).mean() / 4  # lossy VP9 at crf 24


def test_each_pair_differs_only_by_temporal_order():
    for first in range(0, len(DEMO_CLASSES), 2):
        forward = render_clip(first, np.random.default_rng(11), 32, 10)
        backward = render_clip(first + 1, np.random.default_rng(11), 32, 10)
        assert np.array_equal(forward[::-1], backward), DEMO_CLASSES[first]
        assert not np.array_equal(forward, backward)


def test_same_seed_same_bytes_other_seed_other_clips(demo, tmp_path):
    again = make_demo_dataset(tmp_path / "again", seed=7, **TINY)
    other = make_demo_dataset(tmp_path / "other", seed=8, **TINY)
    for relative in ("videos/moving_left/train_0000.webm", "videos/disappearing/val_0000.webm"):
        assert (demo.root / relative).read_bytes() == (again.root / relative).read_bytes()
        assert (demo.root / relative).read_bytes() != (other.root / relative).read_bytes()
    assert demo.train_list.read_text() == again.train_list.read_text()


def test_an_identical_dataset_is_reused_and_a_different_one_rebuilt(tmp_path):
    first = make_demo_dataset(tmp_path, seed=1, **TINY)
    video = first.root / "videos/growing/train_0000.webm"
    stamp = os.stat(video).st_mtime_ns, os.stat(first.root / "demo.json").st_mtime_ns
    make_demo_dataset(tmp_path, seed=1, **TINY)
    assert (os.stat(video).st_mtime_ns, os.stat(first.root / "demo.json").st_mtime_ns) == stamp
    before = video.read_bytes()
    make_demo_dataset(tmp_path, seed=2, **TINY)
    assert video.read_bytes() != before
    video.unlink()  # a damaged copy is regenerated
    make_demo_dataset(tmp_path, seed=2, **TINY)
    assert video.is_file()


def test_h264_variant(tmp_path):
    demo = make_demo_dataset(tmp_path, codec="h264", **{**TINY, "val_per_class": 0})
    entries = read_video_list(demo.train_list, demo.root).entries
    assert entries[0].path.endswith(".mp4") and demo.val_list.read_text() == ""
    with VideoReader(entries[0].path) as reader:
        assert reader.index.codec == "h264"


def test_demo_feeds_the_loader(demo):
    config = DataConfig(sampling=demo.sampling, transform=TransformConfig(size=32), backend="cpu")
    config.sampling.num_frames, config.sampling.stride = 4, 2
    dataset = VideoDataset(demo.train_list, demo.root, classes=demo.class_file, config=config)
    batch = next(iter(VideoLoader(dataset, batch_size=5)))
    assert batch["video"].shape == (5, 4, 3, 32, 32) and not batch["skipped"]


def test_command_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0 and "--seed" in capsys.readouterr().out
    out = tmp_path / "cli"
    assert main(["--out", str(out), "--seed", "3", "--train-per-class", "1", "--val-per-class", "0",
                 "--size", "32", "--frames", "4", "--workers", "1"]) == 0
    assert "wrote 10 clips" in capsys.readouterr().out and (out / "train.txt").is_file()
    with pytest.raises(SystemExit) as info:
        main(["--out", str(out), "--size", "33"])
    assert info.value.code == 2 and "even size" in capsys.readouterr().err
