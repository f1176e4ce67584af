"""The DALI backend (here on DALI's CPU decoder) agrees with the CPU backend."""
import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from helpers import EXPECTED_REASONS, make_bad_files, read_frames_dali  # noqa: E402
from vita_clip.data import DataConfig, SamplingConfig, TransformConfig, VideoDataError, VideoDataset, VideoLoader, read_frames  # noqa: E402
from vita_clip.demo.dataset import index_pattern_frames, read_index_pattern, render_clip, write_video  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dali")
    write_video(root / "pattern.webm", index_pattern_frames(40, 48, 64), codec="vp9", gop=10)
    for k in range(4):  # colourful shapes with sharp edges over texture: where converters differ
        frames = render_clip(k * 2, np.random.default_rng(k), 64, 24 + 4 * k)
        write_video(root / f"scene{k}.webm", frames, codec="vp9", gop=12)
    write_video(root / "h264.mp4", index_pattern_frames(20, 48, 64), codec="h264")
    (root / "scenes.txt").write_text("".join(f"scene{k}.webm {k}\n" for k in range(4)))
    return root


@pytest.mark.parametrize("name", ["pattern.webm", "scene3.webm"])
def test_dali_cpu_decodes_the_same_frames_as_pyav(folder, name):
    indices = [17, 0, 35, 35, 3, 26, 9] if name == "pattern.webm" else [0, 11, 5, 35, 20]
    dali = read_frames_dali(folder / name, indices)
    cpu = read_frames(folder / name, indices)
    assert dali.dtype == torch.uint8 and dali.shape == cpu.shape
    assert np.abs(dali.numpy().astype(int) - cpu.astype(int)).max() <= 1  # fixed-point rounding only
    if name == "pattern.webm":
        assert read_index_pattern(dali.numpy()).tolist() == indices


def test_dali_cpu_refuses_h264_by_name(folder):
    with pytest.raises(VideoDataError, match="h264.mp4: DALI's CPU decoder cannot decode h264"):
        read_frames_dali(folder / "h264.mp4", [0])


def loaders(dataset, **kwargs):
    return (VideoLoader(dataset, backend="cpu", **kwargs), VideoLoader(dataset, backend="dali", device=None, **kwargs))


@pytest.mark.parametrize("train", [False, True])
def test_both_backends_give_the_same_batches(folder, train):
    transform = TransformConfig(size=32, num_crops=3, flip=0.5, rand_augment_ops=0, color_jitter=0.5)
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=5, num_clips=2), transform=transform)
    dataset = VideoDataset(folder / "scenes.txt", folder, train=train, config=config)
    cpu, dali = loaders(dataset, batch_size=3, drop_last=False)
    for epoch in (0, 1):
        cpu.set_epoch(epoch), dali.set_epoch(epoch)
        pairs = list(zip(cpu, dali))
        assert len(pairs) == 2
        for a, b in pairs:
            assert torch.equal(a["index"], b["index"]) and torch.equal(a["label"], b["label"])
            views = () if train else (6,)
            assert a["video"].shape == b["video"].shape == (len(a["index"]), *views, 4, 3, 32, 32)
            assert b["video"].dtype == torch.float32
            # one level of rounding, through resizing and normalisation (std ~ 0.26)
            assert (a["video"] - b["video"]).abs().max() < 1.5 / 255 / 0.26


def test_bad_files_are_skipped_or_raised_like_on_the_cpu(folder, tmp_path):
    bad = make_bad_files(tmp_path, {"h264": str(folder / "h264.mp4"), "vp9": str(folder / "pattern.webm")})
    bad["h264"] = str(folder / "h264.mp4")
    (tmp_path / "list.txt").write_text(f"{folder / 'scene0.webm'} 0\n" + "".join(f"{p} 1\n" for p in bad.values()))
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=2), transform=TransformConfig(size=32))
    dataset = VideoDataset(tmp_path / "list.txt", train=False, config=config)
    loader = VideoLoader(dataset, batch_size=4, backend="dali", device=None)
    assert [b["index"].tolist() for b in loader] == [[0]]
    reasons = {s.path: s.reason for s in loader.skipped}
    assert set(reasons) == set(bad.values())
    for kind, path in bad.items():
        assert (EXPECTED_REASONS.get(kind) or "DALI's CPU decoder cannot decode h264") in reasons[path]

    strict = VideoDataset(tmp_path / "list.txt", train=False, config=DataConfig(
        sampling=config.sampling, transform=config.transform, on_error="raise"))
    with pytest.raises(VideoDataError, match="file not found|is a directory|empty file|not a readable"):
        list(VideoLoader(strict, batch_size=4, backend="dali", device=None))


def test_a_failing_dali_run_is_retried_video_by_video(folder):
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=2), transform=TransformConfig(size=32))
    dataset = VideoDataset(folder / "scenes.txt", folder, train=False, config=config)
    loader = VideoLoader(dataset, batch_size=4, backend="dali", device=None)
    scene2 = str(folder / "scene2.webm")
    loader._batches.decoder._num_frames[scene2] = 500  # claims frames the file does not have: DALI fails
    batches = list(loader)
    assert [b["index"].tolist() for b in batches] == [[0, 1, 3]]
    assert [(s.index, s.path) for s in loader.skipped] == [(2, scene2)]
    assert "DALI could not decode the frames" in loader.skipped[0].reason
    del loader._batches.decoder._num_frames[scene2]
    assert [b["index"].tolist() for b in loader] == [[0, 1, 2, 3]]  # the rebuilt pipeline works
