"""The DALI backend (here on DALI's CPU decoder) agrees with the CPU backend, decodes ahead of
the consumer into tensors torch owns, turns rotated clips upright, falls back to the CPU decoder
per video, stops cleanly, and refuses a GPU decoder it cannot use with one line."""
import dataclasses
import io
import threading

import numpy as np
import pytest
import torch

pytest.importorskip("nvidia.dali")

from helpers_video_corpus import X264_BFRAMES, X265, CorpusClip, write_clip  # noqa: E402

from helpers import EXPECTED_REASONS, finishes_within, make_bad_files, read_frames_dali  # noqa: E402
from vita_clip.cli import user_errors  # noqa: E402
from vita_clip.data import (  # noqa: E402
    DataConfig,
    SamplingConfig,
    TransformConfig,
    VideoDataError,
    VideoDataset,
    VideoLoader,
    VideoReader,
    batching,
    decode_dali,
    read_frames,
)
from vita_clip.data.decode_dali import DaliDecoder  # noqa: E402
from vita_clip.data.errors import DecoderUnavailable  # noqa: E402
from vita_clip.demo.dataset import index_pattern_frames, read_index_pattern, render_clip, write_video  # noqa: E402

DEADLINE_S = 60  # tiny clips decode in milliseconds: anything near this is a hang
FEEDER = "vita-clip-dali-feeder"


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


def feeders_alive() -> int:
    return sum(t.name == FEEDER and t.is_alive() for t in threading.enumerate())


def test_bad_files_are_skipped_or_raised_like_on_the_cpu(folder, tmp_path):
    bad = make_bad_files(tmp_path, {"h264": str(folder / "h264.mp4"), "vp9": str(folder / "pattern.webm")})
    (tmp_path / "list.txt").write_text(f"{folder / 'scene0.webm'} 0\n" + "".join(f"{p} 1\n" for p in bad.values())
                                       + f"{folder / 'h264.mp4'} 1\n")
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=2), transform=TransformConfig(size=32))
    dataset = VideoDataset(tmp_path / "list.txt", train=False, config=config)
    loader = VideoLoader(dataset, batch_size=4, backend="dali", device=None)
    batches = finishes_within(DEADLINE_S, list, loader)
    h264 = len(dataset) - 1  # a codec DALI's CPU decoder lacks: decoded by the CPU decoder, not skipped
    assert [b["index"].tolist() for b in batches] == [[0], [h264]]
    assert torch.equal(batches[1]["video"][0], dataset[h264]["video"])
    reasons = {s.path: s.reason for s in loader.skipped}
    assert set(reasons) == set(bad.values())
    for kind, path in bad.items():
        assert EXPECTED_REASONS[kind] in reasons[path]

    strict = VideoDataset(tmp_path / "list.txt", train=False, config=DataConfig(
        sampling=config.sampling, transform=config.transform, on_error="raise"))
    with pytest.raises(VideoDataError, match="file not found|is a directory|empty file|not a readable"):
        finishes_within(DEADLINE_S, list, VideoLoader(strict, batch_size=4, backend="dali", device=None))
    assert feeders_alive() == 0


def scenes(folder, train=False, **sampling):
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=2, **sampling), transform=TransformConfig(size=32))
    return VideoDataset(folder / "scenes.txt", folder, train=train, config=config)


def test_a_failing_dali_run_is_retried_video_by_video(folder):
    dataset = scenes(folder)
    loader = VideoLoader(dataset, batch_size=1, backend="dali", device=None)  # batch 3 in flight when 2 fails
    scene2 = str(folder / "scene2.webm")
    decoder = loader._batches.decoder
    decoder.decode_frames(scene2, [0])
    real = decoder._videos[scene2]
    decoder._videos[scene2] = dataclasses.replace(real, num_frames=500)  # frames the file lacks: DALI fails
    batches = finishes_within(DEADLINE_S, list, loader)
    assert [b["index"].tolist() for b in batches] == [[0], [1], [3]]
    for batch in batches:  # the batches in flight were decoded again, right
        cpu = dataset[batch["index"].item()]["video"]
        assert (batch["video"][0] - cpu).abs().max() < 1.5 / 255 / 0.26
    assert [(s.index, s.path) for s in loader.skipped] == [(2, scene2)]
    assert "DALI could not decode the frames" in loader.skipped[0].reason
    assert "the CPU decoder could not either" in loader.skipped[0].reason
    decoder._videos[scene2] = real
    assert [b["index"].tolist() for b in finishes_within(DEADLINE_S, list, loader)] == [[0], [1], [2], [3]]


def raw_frames(dataset, monkeypatch):
    """Make the dataset hand out the decoded uint8 frames themselves as ``video``."""
    monkeypatch.setattr(dataset, "finish", lambda index, frames, frame_indices, rng: {"video": frames, "index": index})


def test_frames_handed_out_stay_valid_after_later_runs(folder, monkeypatch):
    dataset = scenes(folder)
    raw_frames(dataset, monkeypatch)
    decoder = DaliDecoder(dataset, batch_size=1, device=None)
    stream = decoder.stream([[(k, 0)] for k in range(4)])
    first = next(stream)[0]["video"]
    kept = first.clone()
    later = finishes_within(DEADLINE_S, list, stream)  # three more runs of the pipeline
    assert len(later) == 3 and not torch.equal(later[1][0]["video"][:, :8], kept[:, :8])  # other videos
    assert torch.equal(first, kept)
    assert first.untyped_storage().data_ptr() not in {b[0]["video"].untyped_storage().data_ptr() for b in later}


@pytest.mark.parametrize("prefetch", [1, 2, 3])
def test_batches_are_fed_to_dali_before_the_previous_one_is_used(folder, prefetch):
    decoder = DaliDecoder(scenes(folder), batch_size=1, device=None, prefetch=prefetch)
    stream = decoder.stream([[(k % 4, 0)] for k in range(6)])
    first = next(stream)
    # batch 0 is in the consumer's hands: batches 1..prefetch are already decoding
    assert decoder.batches_fed == prefetch + 1
    assert first[0]["index"] == 0
    rest = finishes_within(DEADLINE_S, list, stream)
    assert [s[0]["index"] for s in rest] == [1, 2, 3, 0, 1] and decoder.batches_fed == 6


def test_dali_keeps_the_order_and_the_frames_of_every_epoch(folder):
    dataset = scenes(folder, train=True)
    cpu = VideoLoader(dataset, batch_size=1, backend="cpu")
    dali = VideoLoader(dataset, batch_size=1, backend="dali", device=None, prefetch_factor=3)
    for epoch in (0, 1):
        cpu.set_epoch(epoch), dali.set_epoch(epoch)
        pairs = list(zip(cpu, finishes_within(DEADLINE_S, list, dali)))
        assert len(pairs) == 4
        for a, b in pairs:
            assert torch.equal(a["index"], b["index"])
            assert (a["video"] - b["video"]).abs().max() < 1.5 / 255 / 0.26


def test_stopping_early_or_on_an_error_ends_the_feeder(folder, tmp_path):
    lines = [f"{folder / f'scene{k}.webm'} {k}\n" for k in range(4)]
    (tmp_path / "long.txt").write_text("".join(lines * 4))  # the feeder is still busy at the break
    dataset = VideoDataset(tmp_path / "long.txt", train=False, config=scenes(folder).config)
    loader = VideoLoader(dataset, batch_size=1, backend="dali", device=None)

    def first_batch():
        for batch in loader:
            return batch["index"].tolist()

    assert finishes_within(DEADLINE_S, first_batch) == [0]
    assert feeders_alive() == 0  # closed at the break, not left to the garbage collector
    (tmp_path / "list.txt").write_text("".join(lines[:3]) + f"{tmp_path / 'missing.webm'} 0\n" + lines[3])
    strict = VideoDataset(tmp_path / "list.txt", train=False, config=dataclasses.replace(dataset.config, on_error="raise"))
    seen = []

    def consume():
        for batch in VideoLoader(strict, batch_size=1, backend="dali", device=None):
            seen.append(batch["index"].item())

    with pytest.raises(VideoDataError, match="missing.webm: file not found"):
        finishes_within(DEADLINE_S, consume)
    assert seen == [0, 1, 2] and feeders_alive() == 0


ROTATED = [CorpusClip(f"vp9_rotated_{r % 360}.webm", "libvpx-vp9", num_frames=20, rotation=r,
                      options={"deadline": "realtime", "cpu-used": "8"}) for r in (90, -90, 180)]


def test_rotated_clips_come_out_upright_like_on_the_cpu(folder, tmp_path):
    paths = [write_clip(tmp_path, clip) for clip in ROTATED]
    indices = [0, 19, 7, 7, 12]
    for path in paths:
        cpu = read_frames(path, indices)
        dali = read_frames_dali(path, indices).numpy()
        assert dali.shape == cpu.shape and read_index_pattern(dali).tolist() == indices, path.name
        assert np.abs(dali.astype(int) - cpu.astype(int)).max() <= 1
    (tmp_path / "rotated.txt").write_text("".join(f"{p.name} {k}\n" for k, p in enumerate(paths)))
    config = DataConfig(sampling=SamplingConfig(num_frames=4, stride=3), transform=TransformConfig(size=32, num_crops=3))
    dataset = VideoDataset(tmp_path / "rotated.txt", tmp_path, train=False, config=config)
    cpu_batch, = VideoLoader(dataset, batch_size=3, backend="cpu")
    dali_batch, = finishes_within(DEADLINE_S, list, VideoLoader(dataset, batch_size=3, backend="dali", device=None))
    assert (cpu_batch["video"] - dali_batch["video"]).abs().max() < 1.5 / 255 / 0.26


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the failure on a machine without a GPU")
def test_asking_for_the_gpu_decoder_without_one_fails_at_once_in_one_line(folder, capsys):
    with pytest.raises(DecoderUnavailable) as info:
        finishes_within(DEADLINE_S, lambda: VideoLoader(scenes(folder), batch_size=2, backend="dali", device=0))
    message = str(info.value)
    assert "\n" not in message and message.startswith("DALI cannot decode videos on GPU 0 (NVDEC): ")
    assert "CUDA is not available" in message and message.endswith("use data.backend=cpu (PyAV decoding in DataLoader workers)")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info, user_errors("train"):
        VideoLoader(scenes(folder), batch_size=2, backend="dali", device=0)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("train: error: DALI cannot decode videos on GPU 0") and err.count("\n") == 1


def test_auto_uses_the_cpu_backend_when_the_gpu_decoder_fails(folder, monkeypatch, caplog):
    monkeypatch.setattr(batching, "resolve_backend", lambda backend: "dali")  # as on a GPU machine with DALI
    loader = finishes_within(DEADLINE_S, lambda: VideoLoader(scenes(folder), batch_size=2, backend="auto", device=0))
    assert loader.backend == "cpu" and "backend 'auto': DALI cannot decode videos on GPU 0" in caplog.text
    assert [b["index"].tolist() for b in loader] == [[0, 1], [2, 3]]


def test_the_start_up_check_accepts_the_test_clip_and_refuses_wrong_frames(monkeypatch):
    with VideoReader(io.BytesIO(decode_dali._tiny_h264_clip()), name="test clip") as reader:
        right = torch.from_numpy(reader.read([0, 3]))  # what a working decoder returns

    class Pipeline:  # stands in for DALI's GPU pipeline
        def __init__(self, frames):
            self.frames = frames

        def feed_input(self, name, data):
            pass

        def run(self):
            return ([self.frames],)

    monkeypatch.setattr(decode_dali, "_GPUS_CHECKED", set())
    for frames, ok in [(right, True), (right.flip(0), False), (right[:, :32], False)]:
        monkeypatch.setattr(decode_dali, "_build_pipeline", lambda *args, frames=frames: Pipeline(frames))
        if ok:
            decode_dali.check_gpu_decoding(5)
            assert 5 in decode_dali._GPUS_CHECKED
        else:
            with pytest.raises(DecoderUnavailable, match="^DALI's GPU decoder on GPU 6 decodes a 64x64 test clip wrongly"):
                decode_dali.check_gpu_decoding(6)


# -- on a GPU (make gpu-check): NVDEC through DALI's mixed decoder

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
GPU_CLIPS = [
    CorpusClip("h264_bframes_cfr.mp4", "libx264", options=X264_BFRAMES),
    CorpusClip("h264_bframes_vfr.mp4", "libx264", rate="vfr", num_frames=60, options=X264_BFRAMES),
    CorpusClip("h264_rotated_90.mp4", "libx264", rotation=90, options=X264_BFRAMES),
    CorpusClip("hevc_bframes.mp4", "libx265", options=X265),
    CorpusClip("vp9.webm", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
]


@needs_gpu
@pytest.mark.parametrize("clip", GPU_CLIPS, ids=[c.name for c in GPU_CLIPS])
def test_dali_gpu_decodes_the_frames_the_cpu_decoder_decodes(tmp_path, clip):
    path = write_clip(tmp_path, clip)
    indices = [0, clip.num_frames - 1, 17, 17, 3, clip.num_frames // 2]
    dali = finishes_within(DEADLINE_S, read_frames_dali, path, indices, 0)
    assert dali.is_cuda and dali.dtype == torch.uint8
    dali = dali.cpu().numpy()
    cpu = read_frames(path, indices)
    assert read_index_pattern(dali).tolist() == indices, f"{clip.name}: DALI's GPU decoder numbers frames differently"
    # NVDEC output converted by DALI's kernel, the CPU's by swscale with bilinear chroma: a level or two
    assert np.abs(dali.astype(int) - cpu.astype(int)).max() <= 2


@needs_gpu
def test_the_loader_on_the_gpu_gives_the_batches_of_the_cpu_backend(folder):
    dataset = scenes(folder, train=True)
    cpu = VideoLoader(dataset, batch_size=2, backend="cpu")
    gpu = VideoLoader(dataset, batch_size=2, backend="dali", device=0)
    for a, b in zip(cpu, finishes_within(DEADLINE_S, list, gpu), strict=True):
        assert b["video"].is_cuda and torch.equal(a["index"], b["index"])
        assert (a["video"] - b["video"].cpu()).abs().max() < 2.5 / 255 / 0.26


def test_odd_videos_are_listed_like_on_the_cpu(folder):
    dataset = scenes(folder)
    dataset.config = dataclasses.replace(dataset.config, sampling=SamplingConfig(num_frames=16, stride=2))  # 32 > 24, 28
    cpu = VideoLoader(dataset, batch_size=2, backend="cpu")
    dali = VideoLoader(dataset, batch_size=2, backend="dali", device=None)
    list(cpu), finishes_within(DEADLINE_S, list, dali)
    assert len(cpu.odd) == 2 and [str(o) for o in dali.odd] == [str(o) for o in cpu.odd]
