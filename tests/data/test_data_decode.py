"""The CPU decoder returns exactly the requested frames, and names the file when it cannot."""
import av
import numpy as np
import pytest

from helpers import EXPECTED_REASONS, make_bad_files
from vita_clip.data import VideoDataError, VideoReader, read_frames
from vita_clip.data.decode_cpu import frame_to_rgb
from vita_clip.demo.dataset import index_pattern_frames, read_index_pattern, write_video

NUM_FRAMES = 40
# H.264 with forced B-frames (decode order != display order) and a keyframe every 10 frames,
# so that reading a few frames seeks, skips non-reference frames and reorders.
CLIPS = {
    "vp9": ("clip.webm", dict(codec="vp9", gop=10)),
    "h264": ("clip.mp4", dict(codec="h264", gop=10, options={"x264-params": "b-adapt=0:bframes=3:scenecut=0"})),
    "mjpeg": ("clip.avi", dict(codec="mjpeg")),
}


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decode")
    frames = index_pattern_frames(NUM_FRAMES, 48, 64)
    return {name: str(write_video(folder / file, frames, **kw)) for name, (file, kw) in CLIPS.items()}


def decode_everything(path):
    with av.open(path) as container:
        return np.stack([frame_to_rgb(f) for f in container.decode(video=0)])


def test_h264_clip_really_has_b_frames(clips):
    with av.open(clips["h264"]) as container:
        pts = [p.pts for p in container.demux(video=0) if p.size]
    assert pts != sorted(pts)


@pytest.mark.parametrize("codec", sorted(CLIPS))
def test_reads_the_requested_frames(clips, codec):
    with VideoReader(clips[codec]) as reader:
        assert reader.num_frames == NUM_FRAMES
        assert (reader.index.width, reader.index.height) == (64, 48)
        for indices in ([0], [39], [5, 6, 7], [38, 2, 17, 17, 30], list(range(0, 40, 16)), [21, 9, 33, 1]):
            frames = reader.read(indices)
            assert frames.shape == (len(indices), 48, 64, 3) and frames.dtype == np.uint8
            assert read_index_pattern(frames).tolist() == indices


@pytest.mark.parametrize("codec", ["vp9", "h264"])
def test_sparse_reads_equal_a_full_decode_pixel_for_pixel(clips, codec):
    everything = decode_everything(clips[codec])
    assert read_index_pattern(everything).tolist() == list(range(NUM_FRAMES))
    rng = np.random.default_rng(0)
    for _ in range(15):
        indices = rng.integers(0, NUM_FRAMES, size=rng.integers(1, 9)).tolist()
        assert np.array_equal(read_frames(clips[codec], indices), everything[indices])


def test_colours_come_back_as_encoded(clips):
    encoded = index_pattern_frames(NUM_FRAMES, 48, 64).astype(int)
    decoded = read_frames(clips["vp9"], list(range(0, NUM_FRAMES, 3))).astype(int)
    interior = (slice(None), slice(3, 9), slice(4, 12))  # inside a cell, away from chroma edges
    error = np.abs(decoded[interior] - encoded[::3][interior])
    assert error.max() <= 5 and error.mean() < 1  # YUV 4:2:0 and lossy-coding rounding


def test_out_of_range_indices(clips):
    with pytest.raises(IndexError, match="outside \\[0, 40\\)"):
        read_frames(clips["vp9"], [3, 40])


@pytest.fixture(scope="module")
def bad_files(clips, tmp_path_factory):
    return make_bad_files(tmp_path_factory.mktemp("bad"), clips)


@pytest.mark.parametrize("kind", sorted(EXPECTED_REASONS))
def test_bad_files_raise_errors_naming_the_file(bad_files, kind):
    with pytest.raises(VideoDataError) as info:
        read_frames(bad_files[kind], [0])
    assert info.value.path == bad_files[kind] and info.value.line is None
    assert EXPECTED_REASONS[kind] in info.value.reason
    assert str(info.value).startswith(bad_files[kind] + ": ")


def test_in_memory_source_uses_the_given_name(clips):
    import io

    with VideoReader(io.BytesIO(open(clips["vp9"], "rb").read()), name="memory.webm") as reader:
        assert reader.index.codec == "vp9" and reader.num_frames == NUM_FRAMES
        assert read_index_pattern(reader.read([12])).tolist() == [12]
    with pytest.raises(VideoDataError, match="^memory.mp4: not a readable video container"):
        VideoReader(io.BytesIO(b"\x00" * 100), name="memory.mp4")


@pytest.mark.parametrize("pixel_format", ["yuv420p", "yuvj420p", "nv12", "yuv422p", "yuv444p", "yuv420p10le", "gray"])
def test_rgb_conversion_is_swscales_rgb24_conversion_bit_for_bit(pixel_format):
    # frame_to_rgb takes a faster planar route; it must give exactly what the rgb24 conversion
    # with the same flags gives (odd sizes included: odd heights of 4:2:0 take the rgb24 route)
    from av.video.reformatter import VideoReformatter

    from vita_clip.data.decode_cpu import RGB_CONVERSION

    rng = np.random.default_rng()
    reference = VideoReformatter()
    for width, height in [(340, 256), (341, 257), (17, 9), (1, 1), (33, 66), (258, 343), (640, 360)]:
        frame = av.VideoFrame(width, height, pixel_format)
        for plane in frame.planes:
            view = memoryview(plane)
            values = rng.integers(0, 256, size=len(view), dtype=np.uint8)
            if pixel_format.endswith("10le"):
                values[1::2] &= 3  # little-endian 10-bit samples
            view[:] = values.tobytes()
        expected = reference.reformat(frame, format="rgb24", interpolation=RGB_CONVERSION, threads=1).to_ndarray()
        assert np.array_equal(frame_to_rgb(frame), expected), (pixel_format, width, height)
