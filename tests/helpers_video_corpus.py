"""Tiny real video files of every container, codec and frame-rate pattern the decoder must read.

Every clip shows :func:`~vita_clip.demo.dataset.index_pattern_frames` (the frame number burnt into
the pixels), so a test can tell which frame came out, besides comparing with a full decode.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from vita_clip.demo.dataset import index_pattern_frames

HEIGHT, WIDTH = 48, 64
# x264 with B-frames in every GOP (b-adapt=0 keeps them where the content would not need them)
X264_BFRAMES = {"preset": "veryfast", "x264-params": "bframes=3:b-adapt=0:b-pyramid=normal:scenecut=0"}


@dataclass(frozen=True)
class CorpusClip:
    """How to write one clip: file name, PyAV encoder, container format, timestamps."""

    name: str
    encoder: str
    num_frames: int = 48
    rate: str = "cfr"            # cfr | vfr | ntsc_drops | rate_change | none (no timestamps: raw streams)
    format: str | None = None    # container format when the extension does not say it
    gop: int = 12
    options: dict = field(default_factory=dict)
    pix_fmt: str = "yuv420p"
    rotation: int = 0            # display rotation written to the container (degrees, counter-clockwise)
    faststart: bool = False


def frame_times(clip: CorpusClip) -> tuple[Fraction, list[int]]:
    """(time base, pts of each frame in presentation order) of a frame-rate pattern."""
    n = clip.num_frames
    if clip.rate == "vfr":  # phone style: 30 fps with jitter and stalls, in a 1/90000 time base
        steps = np.random.default_rng(len(clip.name)).choice([2400, 3000, 3003, 3600, 6000, 9000], size=n)
        return Fraction(1, 90000), [0] + np.cumsum(steps[:-1]).tolist()
    if clip.rate == "ntsc_drops":  # 29.97 fps with every 7th frame missing from the timeline
        return Fraction(1001, 30000), [i + i // 6 for i in range(n)]
    if clip.rate == "rate_change":  # 30 fps, then 12 fps for the second half
        return Fraction(1, 60), [2 * i if i < n // 2 else n + 5 * (i - n // 2) for i in range(n)]
    return Fraction(1, 25), list(range(n))


def write_clip(folder: Path, clip: CorpusClip) -> Path:
    """Encode ``clip`` into ``folder``; returns the path."""
    path = folder / clip.name
    upright = index_pattern_frames(clip.num_frames, HEIGHT, WIDTH)
    # stored so that turning it by `rotation` (counter-clockwise) shows the upright pattern
    stored = np.ascontiguousarray(np.rot90(upright, -clip.rotation // 90, axes=(1, 2)))
    time_base, pts = frame_times(clip)
    options = {"fflags": "+bitexact"}
    if clip.faststart:
        options["movflags"] = "+faststart"
    with av.open(str(path), mode="w", format=clip.format, options=options) as container:
        stream = container.add_stream(clip.encoder, rate=25 if clip.rate in ("cfr", "none") else 30)
        stream.height, stream.width = stored.shape[1:3]
        stream.pix_fmt = clip.pix_fmt
        stream.codec_context.thread_count = 1
        stream.codec_context.time_base = time_base
        if clip.encoder not in ("mjpeg",):
            stream.codec_context.gop_size = clip.gop
        stream.options = dict(clip.options)
        if clip.rotation:
            stream.set_display_rotation(clip.rotation)
        for rgb, t in zip(stored, pts):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts, frame.time_base = t, time_base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


X265 = {"x265-params": "bframes=3:b-adapt=0:keyint=12:min-keyint=12:scenecut=0:log-level=error"}
MPEG_B = {"bf": "2"}

VALID_CLIPS = [
    CorpusClip("h264_bframes_cfr.mp4", "libx264", options=X264_BFRAMES),
    CorpusClip("h264_bframes_vfr.mp4", "libx264", rate="vfr", num_frames=60, options=X264_BFRAMES),
    CorpusClip("h264_bframes_vfr_faststart.mp4", "libx264", rate="vfr", options=X264_BFRAMES, faststart=True),
    CorpusClip("h264_ntsc_drops.mov", "libx264", rate="ntsc_drops", num_frames=60, options=X264_BFRAMES),
    CorpusClip("h264_rate_change.mkv", "libx264", rate="rate_change", num_frames=60, options=X264_BFRAMES),
    CorpusClip("h264_rotated_90.mp4", "libx264", rotation=90, options=X264_BFRAMES),
    CorpusClip("h264_rotated_270.mp4", "libx264", rotation=-90, options=X264_BFRAMES),
    CorpusClip("h264_open_gop.mkv", "libx264",  # frames before a keyframe in display order, after it in decoding
               options={"preset": "veryfast", "x264-params": "bframes=3:b-adapt=0:scenecut=0:open-gop=1"}),
    CorpusClip("h264_bframes.ts", "libx264", options=X264_BFRAMES, num_frames=60),
    CorpusClip("h264_vfr.ts", "libx264", rate="vfr", options=X264_BFRAMES),
    CorpusClip("h264_bframes.flv", "libx264", options=X264_BFRAMES),
    CorpusClip("h264_raw.h264", "libx264", rate="none", options=X264_BFRAMES),
    CorpusClip("hevc_bframes.mp4", "libx265", options=X265),
    CorpusClip("hevc_raw.hevc", "libx265", rate="none", options=X265),
    CorpusClip("mpeg4_bframes.avi", "mpeg4", options=MPEG_B),
    CorpusClip("mpeg4_bframes.mp4", "mpeg4", options=MPEG_B),
    CorpusClip("mpeg2_bframes.mpg", "mpeg2video", format="mpeg", options=MPEG_B),
    CorpusClip("mpeg2_bframes.ts", "mpeg2video", options=MPEG_B),
    CorpusClip("flv1.flv", "flv"),
    CorpusClip("vp8.webm", "libvpx", options={"deadline": "realtime"}),
    CorpusClip("vp9_vfr.webm", "libvpx-vp9", rate="vfr", options={"deadline": "realtime", "cpu-used": "8"}),
    CorpusClip("vp9_altref.mkv", "libvpx-vp9", num_frames=40,  # hidden alt-ref frames: packets without output
               options={"deadline": "good", "cpu-used": "8", "auto-alt-ref": "1", "lag-in-frames": "16"}),
    CorpusClip("mjpeg.avi", "mjpeg", pix_fmt="yuvj420p"),
]
