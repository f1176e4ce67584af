"""Clips/s of each decoder for Vita-CLIP's 8x16 dense sampling of a 10 s, 30 fps clip, side by
side in one run: the project's CPU decoder, its peers decord and torchcodec, and the baseline.

The baseline is what the original code does: decode every frame with PyAV, keep them, convert
the 8 sampled ones to RGB. Every decoder gets the same files and frame indices and one thread
(torch's intra-op threads are set to 1 as well, for torchcodec). The decoders of a clip are
timed in interleaved rounds (one round = the 8 clips; each round times every decoder once, in a
rotating order), so that other work on a shared machine slows them alike. The ratios printed
at the end are of median throughputs measured in this run: ``provider / pyav_all_frames``
(speed-up over the original) and ``cpu / peer`` (goal: >= 1.5 against every peer at x264
defaults); the "Paired ratios" sections give ours / peer within each round, median and range.

Same frames: before timing, each decoder's frames are compared, bit for bit, with a full
sequential decode converted to RGB the way that decoder converts: ours with bilinear chroma
(like DALI: swscale's rgb24 conversion with :data:`~vita_clip.data.decode_cpu.RGB_CONVERSION`,
which :func:`~vita_clip.data.decode_cpu.frame_to_rgb` reproduces bit for bit by a faster route),
decord and torchcodec with swscale's default conversion (``VideoFrame.to_ndarray(format="rgb24")``). The two conversions
differ by up to ~120 levels on sharp colour edges (mean ~1.4 levels), so pixel values are not
compared across the two groups; the frames are the same.

Clips (340x256, the short side Kinetics copies are resized to; a camera pan over a textured
scene with light sensor noise, so that x264 chooses B-frames as it does on real footage):
* ``h264_x264_defaults``: ``ffmpeg -c:v libx264`` defaults (preset medium, keyframe interval
  250, 3 B-frames with pyramid, crf 23);
* ``h264_gop16``: the same with a keyframe every 16 frames, as mmaction2's ``resize_videos.py --dense``;
* ``vp9``: libvpx-vp9 defaults (keyframes every 128 frames); DALI's CPU decoder reads it.

Run: ``pytest benchmarks/test_decode_speed.py --benchmark-only`` (the peers are the ``bench``
extra: ``pip install -e .[bench]``; torchcodec also needs FFmpeg's shared libraries; a peer
that does not import is skipped).
"""
import statistics
import time

import av
import numpy as np
import pytest
import torch

from recording import add_section, record, report_ratio
from vita_clip.data import read_frames
from vita_clip.data.decode_cpu import RGB_CONVERSION
from vita_clip.data.sampling import dense_train_indices, sample_rngs
from vita_clip.demo.dataset import write_video

NUM_FRAMES, HEIGHT, WIDTH, FPS = 300, 256, 340, 30
X264_DEFAULTS = {"preset": "medium"}  # write_video's H.264 default is veryfast; ffmpeg's is medium
CLIPS = {"h264_x264_defaults": dict(codec="h264", options=X264_DEFAULTS),
         "h264_gop16": dict(codec="h264", gop=16, options=X264_DEFAULTS),
         "vp9": dict(codec="vp9")}
CLIPS_PER_ROUND = 8
WARMUP_ROUNDS = 1
ROUNDS = 9
BASELINE = "pyav_all_frames"
OURS = "cpu (PyAV, reference frames only)"
PEER_GOAL = ">= 1.5"


def panning_scene(seed=0):
    """A camera pan over a smooth texture with fine static detail, a moving block and light
    sensor noise (independent strong noise in every frame would make x264 drop B-frames)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:HEIGHT + 200, 0:WIDTH + NUM_FRAMES] / 60.0
    texture = np.stack([np.sin(x * a + y * b + c) for a, b, c in rng.uniform(0.3, 2.0, size=(3, 3))], -1)
    texture = 128 + 70 * texture + rng.normal(0, 12, size=texture.shape[:2] + (1,))
    frames = np.empty((NUM_FRAMES, HEIGHT, WIDTH, 3), dtype=np.uint8)
    for i in range(NUM_FRAMES):
        top = int(100 + 60 * np.sin(i / 40))
        frame = texture[top:top + HEIGHT, i:i + WIDTH].copy()
        left = int(20 + i * 0.9) % (WIDTH - 40)
        frame[100:150, left:left + 40] = (230, 30, 60)
        frames[i] = np.clip(frame + rng.normal(0, 1, size=(HEIGHT, WIDTH, 1)), 0, 255)
    return frames


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    frames = panning_scene()
    return {name: str(write_video(folder / f"{name}.{'webm' if kw['codec'] == 'vp9' else 'mp4'}", frames,
                                   fps=FPS, crf=23, **kw)) for name, kw in CLIPS.items()}


@pytest.fixture(scope="module")
def full_decodes(clips):
    """Every frame of each clip in presentation order: (ours-converted, swscale-default-converted)."""
    out = {}
    for name, path in clips.items():
        with av.open(path) as container:
            frames = sorted(container.decode(video=0), key=lambda f: f.pts)
        out[name] = (np.stack([f.reformat(format="rgb24", interpolation=RGB_CONVERSION).to_ndarray() for f in frames]),
                     np.stack([f.to_ndarray(format="rgb24") for f in frames]))
    return out


@pytest.fixture(scope="module")
def index_sets():
    """8 frames at stride 16 from random starts: the sampling of Vita-CLIP's training."""
    return [dense_train_indices(NUM_FRAMES, 8, 16, sample_rngs(0, 0, i)[0]).tolist() for i in range(CLIPS_PER_ROUND)]


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pyav_all_frames(path, indices):
    """The original: decode every frame, keep them by timestamp, convert the sampled ones."""
    with av.open(path) as container:
        container.streams.video[0].thread_count = 1
        frames = {frame.pts: frame for frame in container.decode(video=0)}
    ordered = [frames[k] for k in sorted(frames)]
    return np.stack([ordered[i].to_ndarray(format="rgb24") for i in indices])


def group_of(clip):
    return f"decode 8x16 of a 10 s clip ({clip})"


def check_same_frames(decode, reference, index_sets):
    for indices in index_sets:
        frames = np.asarray(decode(indices))
        assert frames.shape == reference[indices].shape and np.array_equal(frames, reference[indices]), indices


def peer_decoders(path):
    """(name, decode) of the peers that import here, each given one thread."""
    peers = []
    try:
        import decord

        peers.append((f"decord {decord.__version__}",
                      lambda idx: decord.VideoReader(path, num_threads=1).get_batch(idx).asnumpy()))
    except ImportError:
        pass
    try:
        import torchcodec
        from torchcodec.decoders import VideoDecoder
    except (ImportError, RuntimeError, OSError):  # RuntimeError: FFmpeg's libraries not found
        return peers
    version = torchcodec.__version__.split("+")[0]
    for seek_mode in ("exact", "approximate"):
        def decode(idx, seek_mode=seek_mode):
            decoder = VideoDecoder(path, num_ffmpeg_threads=1, seek_mode=seek_mode)
            return decoder.get_frames_at(idx).data.permute(0, 2, 3, 1).numpy()
        peers.append((f"torchcodec {version} ({seek_mode} seek)", decode))
    return peers


def dali_decoder(path, index_sets):
    """DALI's CPU decoder through the DALI loader path (one pipeline run per clip), or None."""
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return None
    from vita_clip.data import DataConfig, SamplingConfig, VideoDataset
    from vita_clip.data.decode_dali import DaliDecoder

    list_file = path + ".txt"
    with open(list_file, "w") as f:
        f.write(f"{path} 0\n")
    dataset = VideoDataset(list_file, config=DataConfig(sampling=SamplingConfig(num_frames=8, stride=16)))
    decoder = DaliDecoder(dataset, batch_size=1, device=None)
    decoder.decode_frames(path, [0])  # index the file once, as the loader does after its first epoch

    def decode(indices):
        return decoder.decode_frames(path, indices)

    assert np.abs(decode(index_sets[0]).numpy().astype(int) - read_frames(path, index_sets[0])).max() <= 1
    return decode


@pytest.mark.parametrize("clip", sorted(CLIPS))
def test_decoders_side_by_side(once, clips, full_decodes, index_sets, clip):
    """Every decoder's frames are checked, then all are timed in interleaved rounds (each round
    times every decoder once, in a rotating order), so that load from other work on the machine
    falls on all of them alike; the per-round ratios give the spread of ours / each peer."""
    path = clips[clip]
    ours_frames, swscale_frames = full_decodes[clip]
    decoders = [(BASELINE, lambda idx: pyav_all_frames(path, idx)), (OURS, lambda idx: read_frames(path, idx))]
    check_same_frames(decoders[0][1], swscale_frames, index_sets[:2])
    check_same_frames(decoders[1][1], ours_frames, index_sets)
    for name, decode in peer_decoders(path):
        check_same_frames(decode, swscale_frames, index_sets)
        decoders.append((name, decode))
    dali = dali_decoder(path, index_sets) if clip == "vp9" else None
    if dali is not None:
        decoders.append(("dali (CPU decoder)", dali))

    def rounds():
        times = {name: [] for name, _ in decoders}
        for r in range(WARMUP_ROUNDS + ROUNDS):
            for name, decode in decoders[r % len(decoders):] + decoders[:r % len(decoders)]:
                start = time.perf_counter()
                for indices in index_sets:
                    decode(indices)
                if r >= WARMUP_ROUNDS:
                    times[name].append(time.perf_counter() - start)
        return times

    times = once(group_of(clip), rounds)
    group = group_of(clip)
    for name, values in times.items():
        rates = [CLIPS_PER_ROUND / t for t in values]
        record(group, name, "throughput", statistics.median(rates), "clips/s", values=rates)
        if name != BASELINE:
            report_ratio(group, name, BASELINE, metric="throughput")  # = how many times faster than the original
        if name not in (BASELINE, OURS):
            report_ratio(group, OURS, name, metric="throughput", goal=PEER_GOAL if "h264" in clip else "")
    peers = [name for name in times if name not in (BASELINE, OURS)]
    lines = []
    for name in peers:  # ours / peer within each round: the spread of the ratio under the machine's load
        paired = sorted(b / a for a, b in zip(times[OURS], times[name]))
        lines.append(f"- ours / {name}: median {statistics.median(paired):.2f}, "
                     f"min-max {paired[0]:.2f}-{paired[-1]:.2f} over {len(paired)} rounds")
    add_section(f"Paired ratios, {group}", lines)
