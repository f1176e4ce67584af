"""The dataset and loader end to end on generated clips: frames, views, epochs, workers,
distributed sampling, and the skip-or-raise policy for every kind of bad input."""
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler

from helpers import EXPECTED_REASONS, make_bad_files
from vita_clip.data import (
    DataConfig,
    SamplingConfig,
    SkippedSample,
    TransformConfig,
    VideoDataError,
    VideoDataset,
    VideoLoader,
    collate_clips,
    load_clip,
)
from vita_clip.demo.dataset import index_pattern_frames, read_index_pattern, write_video

SIZE = 48
LENGTHS = [40, 33, 26, 40, 12, 30]  # frames of the good clips; 12 is shorter than a window


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    (root / "videos").mkdir()
    for k, n in enumerate(LENGTHS):
        write_video(root / "videos" / f"good{k}.webm", index_pattern_frames(n, SIZE, SIZE), codec="vp9", gop=8)
    good = "".join(f"videos/good{k}.webm {k % 3}\n" for k in range(len(LENGTHS)))
    (root / "good.txt").write_text(good)
    return root


@pytest.fixture(scope="module")
def bad_folder(folder, tmp_path_factory):
    clips = {"h264": str(write_video(folder / "videos" / "h.mp4", index_pattern_frames(20, SIZE, SIZE), codec="h264")),
             "vp9": str(folder / "videos" / "good0.webm")}
    bad = make_bad_files(tmp_path_factory.mktemp("bad"), clips)
    lines = [f"videos/good{k}.webm {k % 3}" for k in range(3)]
    lines += [f"{path} 1" for path in bad.values()]
    lines += ["videos/good3.webm", "videos/good4.webm 7", "videos/good5.webm 2"]  # no label; label 7 of 3 classes
    (folder / "mixed.txt").write_text("\n".join(lines) + "\n")
    (folder / "only_bad.txt").write_text(f"videos/good0.webm 0\n{bad['truncated_webm']} 1\n")
    return bad


def exact_config(num_frames=4, stride=4, mode="dense", num_clips=1, **kwargs):
    """No augmentation and no resizing, so that decoded frames can be read back."""
    transform = TransformConfig(size=SIZE, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), rand_augment_ops=0)
    sampling = SamplingConfig(num_frames=num_frames, stride=stride, mode=mode, num_clips=num_clips)
    return DataConfig(sampling=sampling, transform=transform, backend="cpu", **kwargs)


def frame_ids(video, config):
    """Frame indices encoded in a (..., T, 3, S, S) output."""
    mean = torch.tensor(config.transform.mean)[:, None, None]
    std = torch.tensor(config.transform.std)[:, None, None]
    pixels = ((video * std + mean) * 255).round().clamp(0, 255).to(torch.uint8)
    flat = pixels.reshape(-1, 3, SIZE, SIZE).permute(0, 2, 3, 1).numpy()
    return read_index_pattern(flat).reshape(video.shape[:-3])


def test_training_sample_holds_the_planned_frames(folder):
    config = exact_config()
    dataset = VideoDataset(folder / "good.txt", folder, classes=["a", "b", "c"], train=True, config=config)
    assert len(dataset) == len(LENGTHS) and dataset.num_views == 1
    sample = dataset[1]
    assert sample["video"].shape == (4, 3, SIZE, SIZE) and sample["video"].dtype == torch.float32
    assert (sample["label"], sample["index"]) == (1, 1)
    planned, _ = dataset.plan(1, LENGTHS[1])
    assert frame_ids(sample["video"], config).tolist() == planned[0].tolist()
    assert planned[0].tolist() == list(range(planned[0, 0], planned[0, 0] + 13, 4))

    starts = set()
    for epoch in range(6):
        dataset.set_epoch(epoch)
        ids = frame_ids(dataset[0]["video"], config)
        assert ids.tolist() == dataset.plan(0, 40)[0][0].tolist()
        starts.add(int(ids[0]))
    assert len(starts) > 1  # new epochs, new clips
    assert frame_ids(dataset[(0, 2)]["video"], config).tolist() == dataset.plan(0, 40, epoch=2)[0][0].tolist()


def test_short_clip_is_padded_with_its_last_frame(folder):
    config = exact_config(num_clips=2)
    dataset = VideoDataset(folder / "good.txt", folder, train=False, config=config)
    assert frame_ids(dataset[4]["video"], config).tolist() == [[0, 4, 8, 11]] * 2  # 12 frames, window 13


def test_test_views_dense_and_segment(folder):
    config = exact_config(num_clips=3)
    dataset = VideoDataset(folder / "good.txt", folder, train=False, config=config)
    video = dataset[0]["video"]  # 40 frames; window 13, starts round(27 * i / 2)
    assert video.shape == (3, 4, 3, SIZE, SIZE)
    assert frame_ids(video, config).tolist() == [[0, 4, 8, 12], [14, 18, 22, 26], [27, 31, 35, 39]]

    config = exact_config(num_frames=5, mode="segment")
    dataset = VideoDataset(folder / "good.txt", folder, train=False, config=config)
    assert frame_ids(dataset[1]["video"], config).tolist() == [[3, 9, 16, 23, 29]]  # 33 frames: (2i+1)*33//10

    three_crops = DataConfig(sampling=SamplingConfig(num_frames=4, stride=4, num_clips=2),
                             transform=TransformConfig(size=32, num_crops=3), backend="cpu")
    dataset = VideoDataset(folder / "good.txt", folder, train=False, config=three_crops)
    assert dataset.num_views == 6 and dataset[0]["video"].shape == (6, 4, 3, 32, 32)


def test_load_clip_gives_the_test_views_of_one_file(folder, bad_folder):
    config = exact_config(num_clips=3)
    video = load_clip(folder / "videos" / "good0.webm", config)
    dataset = VideoDataset(folder / "good.txt", folder, train=False, config=config)
    assert torch.equal(video, dataset[0]["video"])
    assert frame_ids(video, config).tolist() == [[0, 4, 8, 12], [14, 18, 22, 26], [27, 31, 35, 39]]
    with pytest.raises(VideoDataError, match="truncated.webm: truncated"):
        load_clip(bad_folder["truncated_webm"], config)


def test_skip_policy_reports_every_bad_input(folder, bad_folder):
    dataset = VideoDataset(folder / "mixed.txt", folder, classes=["a", "b", "c"], train=False,
                           config=exact_config())
    lines = [(s.line, s.reason) for s in dataset.list_skipped]
    assert [line for line, _ in lines] == [3 + len(bad_folder) + 1, 3 + len(bad_folder) + 2]
    assert "expected '<path> <label>'" in lines[0][1] and "label 7" in lines[1][1]

    loader = VideoLoader(dataset, batch_size=4)
    seen = [i for batch in loader for i in batch["index"].tolist()]
    good_paths = {str(folder / f"videos/good{k}.webm") for k in (0, 1, 2, 5)}
    assert sorted(dataset.entries[i].path for i in seen) == sorted(good_paths)
    skipped = {s.path: s.reason for s in loader.skipped}
    assert set(skipped) == set(bad_folder.values())
    for kind, path in bad_folder.items():
        assert EXPECTED_REASONS[kind] in skipped[path]
    report = loader.report()
    assert "list lines skipped: 2" in report and f"videos skipped in epoch 0: {len(bad_folder)}" in report
    assert bad_folder["truncated_webm"] in report and "line 13" in report

    loader.set_epoch(1)  # the list of skipped videos is per epoch
    list(loader)
    assert len(loader.skipped) == len(bad_folder)


def test_raise_policy(folder, bad_folder):
    with pytest.raises(VideoDataError, match="mixed.txt, line 12: expected '<path> <label>'"):
        VideoDataset(folder / "mixed.txt", folder, classes=["a", "b", "c"], config=exact_config(on_error="raise"))
    dataset = VideoDataset(folder / "only_bad.txt", folder, config=exact_config(on_error="raise"))
    assert dataset[0]["index"] == 0
    with pytest.raises(VideoDataError, match="truncated.webm: truncated"):
        dataset[1]
    with pytest.raises(VideoDataError, match="truncated.webm: truncated"):  # also from a worker process
        list(VideoLoader(dataset, batch_size=2, num_workers=1))


def batches(loader, epoch):
    loader.set_epoch(epoch)
    return [(b["index"].tolist(), b["video"]) for b in loader]


def assert_same_batches(a, b):
    assert [i for i, _ in a] == [i for i, _ in b]
    assert all(torch.equal(x, y) for (_, x), (_, y) in zip(a, b))


def test_workers_shuffling_and_epochs_are_reproducible(folder):
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=3),
                        transform=TransformConfig(size=32, rand_augment_ops=2, flip=0.5), backend="cpu")
    dataset = VideoDataset(folder / "good.txt", folder, train=True, config=config)
    in_process = VideoLoader(dataset, batch_size=2, drop_last=False)
    workers = VideoLoader(dataset, batch_size=2, drop_last=False, num_workers=2, persistent_workers=True)
    epoch0, epoch1 = batches(in_process, 0), batches(in_process, 1)
    assert sorted(i for ids, _ in epoch0 for i in ids) == list(range(len(LENGTHS)))
    assert [ids for ids, _ in epoch0] != [ids for ids, _ in epoch1]  # a new order every epoch
    assert_same_batches(batches(workers, 0), epoch0)
    assert_same_batches(batches(workers, 1), epoch1)  # persistent workers see the new epoch
    assert_same_batches(batches(in_process, 0), epoch0)


def test_distributed_ranks_split_the_data_and_agree_with_one_process(folder):
    config = exact_config()
    dataset = VideoDataset(folder / "good.txt", folder, train=True, config=config)
    single = {i: frame_ids(dataset[(i, 3)]["video"], config).tolist() for i in range(len(dataset))}
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=5)
        loader = VideoLoader(dataset, batch_size=2, sampler=sampler, drop_last=False)
        loader.set_epoch(3)
        for batch in loader:
            for index, video in zip(batch["index"].tolist(), batch["video"]):
                assert frame_ids(video, config).tolist() == single[index]
                seen.append(index)
    assert sorted(seen) == list(range(len(dataset)))


def test_collate_drops_skipped_samples():
    skipped = SkippedSample(index=3, path="x.mp4", reason="file not found")
    sample = {"video": torch.ones(2, 3, 4, 4), "label": 1, "index": 0}
    batch = collate_clips([sample, skipped])
    assert batch["video"].shape == (1, 2, 3, 4, 4) and batch["label"].tolist() == [1]
    assert batch["skipped"] == [skipped] and str(skipped) == "x.mp4: file not found"
    assert collate_clips([skipped])["video"] is None


def test_config_presets_and_validation():
    vita = DataConfig.vita_clip()
    assert (vita.sampling.mode, vita.sampling.num_frames, vita.sampling.stride, vita.sampling.num_clips) == ("dense", 8, 16, 3)
    assert vita.transform.mean == (0.48145466, 0.4578275, 0.40821073) and vita.transform.flip == 0
    vifi = DataConfig.vifi_clip(num_frames=32)
    assert (vifi.sampling.mode, vifi.sampling.num_frames, vifi.transform.train_crop) == ("segment", 32, "multi_scale")
    assert vita.on_error == "skip" and vita.backend == "auto"
    with pytest.raises(ValueError, match="backend must be one of"):
        DataConfig(backend="gpu")
    with pytest.raises(ValueError, match="on_error must be one of"):
        DataConfig(on_error="ignore")


def test_empty_list_is_an_error(tmp_path):
    (tmp_path / "l.txt").write_text("a.mp4\n")
    with pytest.raises(VideoDataError, match="no usable videos"):
        VideoDataset(tmp_path / "l.txt")
