"""Clips/s of each decoder for Vita-CLIP's 8x16 dense sampling of a 10 s, 30 fps clip.

The baseline is what the original code does: decode every frame with PyAV, keep them, convert
the 8 sampled ones to RGB. Each decoder's clips/s goes to the results files (see
``conftest.py``); the ratios printed at the end (``provider / pyav_all_frames`` of the
throughput) are its speed-up over that baseline, measured in the same run on the same clip
and the same frame indices.

Clips (340x256, the short side Kinetics copies are resized to):
* ``h264_gop250``: libx264 with its default keyframe interval (250), as ``ffmpeg -c:v libx264``;
* ``h264_gop16``: a keyframe every 16 frames, as mmaction2's ``resize_videos.py --dense``;
* ``vp9``: libvpx-vp9 defaults (keyframes every 128 frames); DALI's CPU decoder reads it.

Run: ``pytest benchmarks/test_decode_speed.py --benchmark-only``.
"""
import av
import numpy as np
import pytest

from recording import report_ratio
from vita_clip.data import read_frames
from vita_clip.data.decode_cpu import frame_to_rgb
from vita_clip.data.sampling import dense_train_indices, sample_rngs
from vita_clip.demo.dataset import write_video

NUM_FRAMES, HEIGHT, WIDTH, FPS = 300, 256, 340, 30
CLIPS = {"h264_gop250": dict(codec="h264"), "h264_gop16": dict(codec="h264", gop=16), "vp9": dict(codec="vp9")}
CLIPS_PER_ROUND = 8
BASELINE = "pyav_all_frames"


def panning_scene(seed=0):
    """A camera pan over a smooth texture with a moving block and sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT + 200, 0:WIDTH + NUM_FRAMES] / 60.0
    texture = np.stack([np.sin(x * a + y * b + c) for a, b, c in rng.uniform(0.3, 2.0, size=(3, 3))], -1)
    texture = 128 + 70 * texture
    frames = np.empty((NUM_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(NUM_FRAMES):
        top = int(100 + 60 * np.sin(i / 40))
        frame = texture[top:top + HEIGHT, i:i + WIDTH].copy()
        left = int(20 + i * 0.9) % (WIDTH - 40)
        frame[100:150, left:left + 40] = (230, 30, 60)
        frames[i] = np.clip(frame + rng.normal(0, 3, size=(HEIGHT, WIDTH, 1)), 0, 255)
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    frames = panning_scene()
    return {name: str(write_video(folder / f"{name}.{'webm' if kw['codec'] == 'vp9' else 'mp4'}", frames,
                                   fps=FPS, crf=23, **kw)) for name, kw in CLIPS.items()}


@pytest.fixture(scope="module")
def index_sets():
    """8 frames at stride 16 from random starts: the sampling of Vita-CLIP's training."""
    return [dense_train_indices(NUM_FRAMES, 8, 16, sample_rngs(0, 0, i)[0]).tolist() for i in range(CLIPS_PER_ROUND)]


def pyav_all_frames(path, indices):
    """The original: decode every frame, keep them by timestamp, convert the sampled ones."""
    with av.open(path) as container:
        frames = {frame.pts: frame for frame in container.decode(video=0)}
    ordered = [frames[k] for k in sorted(frames)]
    return np.stack([ordered[i].to_ndarray(format="rgb24") for i in indices])


def measure_decoder(measure, benchmark, provider, clip, decode, index_sets):
    """Time ``decode`` over a round of 8 clips; the speed-up over the baseline is printed at the end."""
    def one_round():
        for indices in index_sets:
            decode(indices)

    group = f"decode 8x16 of a 10 s clip ({clip})"
    measure(group, provider, one_round, rounds=3, items=CLIPS_PER_ROUND, item_unit="clips")
    if provider != BASELINE:
        report_ratio(group, provider, BASELINE, metric="throughput")  # = how many times faster than the original


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_pyav_all_frames_baseline(measure, benchmark, clips, index_sets, clip):
    measure_decoder(measure, benchmark, BASELINE, clip, lambda idx: pyav_all_frames(clips[clip], idx), index_sets)


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_cpu_backend(measure, benchmark, clips, index_sets, clip):
    with av.open(clips[clip]) as container:
        everything = np.stack([frame_to_rgb(f) for f in container.decode(video=0)])
    assert np.array_equal(read_frames(clips[clip], index_sets[0]), everything[index_sets[0]])
    measure_decoder(measure, benchmark, "cpu (PyAV seek+skip)", clip, lambda idx: read_frames(clips[clip], idx),
                    index_sets)


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_decord(measure, benchmark, clips, index_sets, clip):
    decord = pytest.importorskip("decord")

    def decode(indices):
        return decord.VideoReader(clips[clip], num_threads=1).get_batch(indices).asnumpy()

    reference = pyav_all_frames(clips[clip], index_sets[0]).astype(int)
    assert np.abs(decode(index_sets[0]).astype(int) - reference).mean() < 3  # the same frames
    measure_decoder(measure, benchmark, "decord 0.6", clip, decode, index_sets)


def test_dali_cpu(measure, benchmark, clips, index_sets):
    pytest.importorskip("nvidia.dali")
    from vita_clip.data import DataConfig, SamplingConfig, VideoDataset
    from vita_clip.data.decode_dali import DaliDecoder

    # one file, decoded through the DALI loader path (one pipeline run per clip)
    list_file = clips["vp9"] + ".txt"
    with open(list_file, "w") as f:
        f.write(f"{clips['vp9']} 0\n")
    dataset = VideoDataset(list_file, config=DataConfig(sampling=SamplingConfig(num_frames=8, stride=16)))
    decoder = DaliDecoder(dataset, batch_size=1, device=None)
    decoder._check(clips["vp9"])  # index the file once, as the loader does after its first epoch
    data = np.fromfile(clips["vp9"], dtype=np.uint8)

    def decode(indices):
        return decoder._run([data], [np.asarray(indices, dtype=np.int32)])[0]

    assert np.abs(decode(index_sets[0]).numpy().astype(int) - read_frames(clips["vp9"], index_sets[0])).max() <= 1
    measure_decoder(measure, benchmark, "dali (CPU decoder)", "vp9", decode, index_sets)
