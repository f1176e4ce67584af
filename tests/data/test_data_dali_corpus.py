"""DALI's CPU decoder and the CPU decoder agree on every corpus clip both can read (VP8, VP9,
MJPEG), frame-rate patterns included: the same frames, pixel values within one level."""
import numpy as np
import pytest

pytest.importorskip("nvidia.dali")

from helpers_video_corpus import VALID_CLIPS, CorpusClip, write_clip  # noqa: E402

from helpers import read_frames_dali  # noqa: E402
from vita_clip.data import read_frames  # noqa: E402
from vita_clip.demo.dataset import read_index_pattern  # noqa: E402

DALI_CODECS = ("libvpx", "libvpx-vp9", "mjpeg")
CLIPS = [c for c in VALID_CLIPS if c.encoder in DALI_CODECS] + [
    CorpusClip("vp9_ntsc_drops.webm", "libvpx-vp9", rate="ntsc_drops", options={"deadline": "realtime", "cpu-used": "8"}),
    CorpusClip("vp8_rate_change.mkv", "libvpx", rate="rate_change", options={"deadline": "realtime"}),
    CorpusClip("vp9.mp4", "libvpx-vp9", options={"deadline": "realtime", "cpu-used": "8"}),
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("dali_corpus")


@pytest.mark.parametrize("clip", CLIPS, ids=[c.name for c in CLIPS])
def test_dali_cpu_and_pyav_give_the_same_frames(folder, clip):
    path = write_clip(folder, clip)
    n = clip.num_frames
    indices = [0, n - 1, 3, 17, 17, n // 2, n // 2 + 1, 29, 8]
    cpu = read_frames(path, indices)
    dali = read_frames_dali(path, indices).numpy()
    assert read_index_pattern(cpu).tolist() == indices
    assert read_index_pattern(dali).tolist() == indices, f"{clip.name}: DALI numbers frames differently"
    assert np.abs(dali.astype(int) - cpu.astype(int)).max() <= 1
