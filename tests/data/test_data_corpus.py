"""Every kind of file FFmpeg reads gives the right frames, every broken one a one-line error, and
nothing hangs.

"The right frames": frame ``i`` is the ``i``-th frame, in presentation order, of a full
sequential decode (rotated upright when the container says so), bit for bit. The corpus covers
the containers (MP4/MOV, MKV/WebM, AVI, MPEG-TS/PS, FLV, raw H.264/HEVC streams), codecs and
frame-rate patterns (constant, variable, 29.97 with drops, a mid-stream rate change) of real
datasets and phone videos, with B-frames wherever the codec has them.
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal

import av
import numpy as np
import pytest
from helpers_video_corpus import HEIGHT, VALID_CLIPS, WIDTH, CorpusClip, write_clip

from vita_clip.data import VideoDataError, VideoReader, decode_cpu, read_frames
from vita_clip.data.decode_cpu import frame_to_rgb
from vita_clip.demo.dataset import read_index_pattern

WATCHDOG_S = 20  # a tiny clip decodes in milliseconds: anything near this is a hang


@contextlib.contextmanager
def watchdog(what: str, seconds: float = WATCHDOG_S):
    """Turn a decoder that never returns into a test failure (SIGALRM interrupts Python loops)."""
    def expire(signum, frame):
        raise TimeoutError(f"{what}: no result after {seconds} s (the decoder hangs)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sequential_decode(path) -> np.ndarray:
    """Every frame in the order a plain decode gives them, converted like the decoder does and
    turned upright by the display rotation: the reference numbering. (The incomplete last
    packet of a cut file is left out.)"""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        decoded = []
        for packet in container.demux(stream):
            if not packet.is_corrupt:
                decoded += stream.decode(packet if packet.size else None)
    return np.stack([np.rot90(frame_to_rgb(f), round(f.rotation / 90) % 4) for f in decoded])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return {clip.name: write_clip(folder, clip) for clip in VALID_CLIPS}


def index_sets(n: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    sets = [[0], [n - 1], [n - 1, 0], list(range(3, n, 7)), list(range(n - 9, n)),
            [n // 2, n // 2 + 1, n // 2 - 1, n // 2]]
    sets += [rng.integers(0, n, size=rng.integers(1, 10)).tolist() for _ in range(6)]
    sets += [np.sort(rng.choice(n, size=8, replace=False)).tolist() for _ in range(3)]
    return sets


@pytest.mark.parametrize("packets", ["kept", "read_again"])
@pytest.mark.parametrize("clip", VALID_CLIPS, ids=[c.name for c in VALID_CLIPS])
def test_sampled_frames_equal_a_full_sequential_decode(corpus, clip: CorpusClip, packets, monkeypatch):
    """Small files keep their packets in memory; big ones seek (here: every file, with no cache)."""
    if packets == "read_again":
        monkeypatch.setattr(decode_cpu, "PACKET_CACHE_BYTES", 0)
    path = corpus[clip.name]
    with watchdog(f"{path}: sequential decode"):
        reference = sequential_decode(path)
    # the clip is what it claims: every frame there once, in order, upright
    assert reference.shape[1:3] == (HEIGHT, WIDTH)
    assert read_index_pattern(reference).tolist() == list(range(clip.num_frames))
    with watchdog(f"{path}: VideoReader"), VideoReader(path) as reader:
        assert reader.num_frames == clip.num_frames
        for indices in index_sets(clip.num_frames, seed=len(clip.name)):
            frames = reader.read(indices)
            assert np.array_equal(frames, reference[indices]), f"{clip.name}: frames {indices}"
    with watchdog(f"{path}: read_frames"):  # a fresh reader per call, as the dataset opens them
        for indices in index_sets(clip.num_frames, seed=1)[:6]:
            assert np.array_equal(read_frames(path, indices), reference[indices]), f"{clip.name}: {indices}"


TIMESTAMPED = [c for c in VALID_CLIPS if c.rate != "none"]


@pytest.mark.parametrize("clip", TIMESTAMPED, ids=[c.name for c in TIMESTAMPED])
def test_files_with_timestamps_take_the_fast_path(corpus, clip, monkeypatch):
    """No read of a well-formed file falls back to decoding everything from the start (the
    equality test above would pass with a decoder that always did, only slowly)."""
    def refuse(self, wanted):
        raise AssertionError(f"{clip.name}: fell back to a sequential decode for frames {wanted}")

    monkeypatch.setattr(VideoReader, "_read_sequential", refuse)
    with watchdog(clip.name), VideoReader(corpus[clip.name]) as reader:
        for indices in index_sets(clip.num_frames, seed=2):
            reader.read(indices)


@pytest.mark.parametrize("name", ["h264_bframes_vfr.mp4", "h264_bframes.ts", "hevc_bframes.mp4"])
def test_non_reference_packets_are_recognised(corpus, name):
    """The B-frame clips have packets the decoder is never given (H.264 nal_ref_idc == 0, HEVC
    sub-layer non-reference pictures), so the equality test above covers leaving them out."""
    with VideoReader(corpus[name]) as reader:
        disposable = [reader._nal.is_disposable(bytes(p)) for p in reader._packets]
    assert 0 < sum(disposable) < len(disposable) / 2 and not disposable[0]


def test_the_corpus_has_the_patterns_it_claims(corpus):
    """B-frames (decode order != display order), no timestamps in raw streams, rotation."""
    def packets(name):
        with av.open(str(corpus[name])) as container:
            return [p for p in container.demux(video=0) if p.size]

    for name in ("h264_bframes_vfr.mp4", "h264_bframes.ts", "hevc_bframes.mp4", "mpeg2_bframes.mpg",
                 "mpeg4_bframes.avi"):
        pts = [p.pts for p in packets(name)]
        assert pts != sorted(pts), name
    steps = np.diff(sorted(p.pts for p in packets("h264_bframes_vfr.mp4")))
    assert len(set(steps.tolist())) >= 4  # variable frame durations
    assert all(p.pts is None for p in packets("h264_raw.h264"))
    for name in ("h264_open_gop.mkv", "hevc_bframes.mp4"):  # leading pictures of open GOPs:
        latest_key, leading = None, 0                       # after a keyframe, shown before it
        for p in packets(name):
            latest_key = p.pts if p.is_keyframe else latest_key
            leading += p.pts < latest_key
        assert leading > 0, name
    with av.open(str(corpus["h264_rotated_90.mp4"])) as container:
        assert next(container.decode(video=0)).rotation == 90


# -- broken files


def broken_files(folder, corpus) -> dict[str, str]:
    mp4 = corpus["h264_bframes_cfr.mp4"].read_bytes()               # index (moov) at the end
    faststart = corpus["h264_bframes_vfr_faststart.mp4"].read_bytes()  # index first, then the data
    mkv = corpus["h264_rate_change.mkv"].read_bytes()
    files = {"empty.mp4": b"", "random_bytes.mp4": np.random.default_rng(0).bytes(20000),
             "text_file.mp4": b"this is not a video\n" * 50, "header_only.mp4": mp4[:40],
             "zeros.mkv": bytes(5000)}
    for fraction in (0.1, 0.5, 0.9):
        files[f"cut_{int(fraction * 100)}pct.mp4"] = mp4[: int(len(mp4) * fraction)]
        files[f"cut_{int(fraction * 100)}pct_faststart.mp4"] = faststart[: int(len(faststart) * fraction)]
    files["cut_20pct.mkv"] = mkv[: len(mkv) // 5]
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    (folder / "a_folder.mp4").mkdir()
    paths["a_folder.mp4"] = str(folder / "a_folder.mp4")
    paths["missing.mp4"] = str(folder / "missing.mp4")
    os.mkfifo(folder / "named_pipe.mp4")  # opening a pipe for reading blocks until a writer comes
    paths["named_pipe.mp4"] = str(folder / "named_pipe.mp4")
    return paths


@pytest.fixture(scope="module")
def broken(corpus, tmp_path_factory):
    return broken_files(tmp_path_factory.mktemp("broken"), corpus)


BROKEN_NAMES = ["empty.mp4", "random_bytes.mp4", "text_file.mp4", "header_only.mp4", "zeros.mkv", "cut_10pct.mp4",
                "cut_50pct.mp4", "cut_90pct.mp4", "cut_10pct_faststart.mp4", "cut_50pct_faststart.mp4",
                "cut_20pct.mkv", "a_folder.mp4", "missing.mp4", "named_pipe.mp4"]


@pytest.mark.parametrize("name", BROKEN_NAMES)
def test_a_broken_file_gives_one_line_naming_it(broken, name):
    path = broken[name]
    with watchdog(path), pytest.raises(VideoDataError) as info:
        read_frames(path, [0, 5, 20])
    message = str(info.value)
    assert info.value.path == path and message.startswith(path + ": ")
    assert "\n" not in message and len(info.value.reason) > 10


def test_an_unreadable_file_gives_one_line_naming_it(corpus, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    path = tmp_path / "unreadable.mp4"
    path.write_bytes(corpus["h264_bframes_cfr.mp4"].read_bytes())
    path.chmod(0)
    with watchdog(str(path)), pytest.raises(VideoDataError, match=f"^{path}: .*(permission|Permission)"):
        read_frames(path, [0])


def test_a_file_cut_near_its_end_is_used_with_a_warning(corpus, tmp_path, caplog):
    """Cut at 90 %: the frames that are there are right, the file is named in a warning and in
    the reader's notes (what a run lists as odd), and frames past the cut are not invented."""
    source = corpus["h264_bframes_vfr_faststart.mp4"]
    data = source.read_bytes()
    path = tmp_path / "cut_90pct_faststart.mp4"
    path.write_bytes(data[: int(len(data) * 0.9)])
    with watchdog(str(path)):
        reference = sequential_decode(path)
        with caplog.at_level(logging.WARNING, logger="vita_clip.data.decode_cpu"), VideoReader(path) as reader:
            assert reader.num_frames == len(reference) < 48
            assert np.array_equal(reader.read([0, len(reference) - 1, 7]), reference[[0, len(reference) - 1, 7]])
            notes = list(reader.notes)
    assert any(str(path) in r.getMessage() and "ends early" in r.getMessage() for r in caplog.records)
    assert len(notes) == 1 and "ends early" in notes[0] and "48" in notes[0]
    with pytest.raises(IndexError, match="outside"):
        read_frames(path, [47])


def test_a_whole_file_has_no_notes(corpus):
    with VideoReader(corpus["h264_bframes_vfr_faststart.mp4"]) as reader:
        assert reader.notes == []
