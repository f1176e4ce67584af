"""Which frames of a video make a clip: the two published schemes, as pure functions.

Frame indices depend only on (video length, :class:`SamplingConfig`, train/test, and, for
training, the generator from :func:`sample_rngs` made from (seed, epoch, index)). Every decoding
backend receives the same indices, so backends can only differ by codec rounding.

* **dense** (Vita-CLIP / EVL): ``num_frames`` frames ``stride`` apart, a window of
  ``(num_frames - 1) * stride + 1`` frames. Training: one window with a uniformly random start.
  Test: ``num_clips`` windows with evenly spaced starts (one clip: the centred window).
* **segment** (TSN, ViFi-CLIP): the video is cut into ``num_frames`` equal segments; training
  takes a random frame of each segment, test takes the segment centres. With ``num_clips > 1``
  at test the clips take evenly spaced offsets inside each segment (ViFi-CLIP draws them at
  random, which makes evaluation non-deterministic).

Videos shorter than a window are padded by repeating their last frame (indices are clamped to
``length - 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SAMPLING_MODES = ("dense", "segment")


@dataclass
class SamplingConfig:
    """How frames are chosen.

    Attributes:
        num_frames: T, frames per clip.
        mode: ``"dense"`` (fixed stride) or ``"segment"`` (TSN).
        stride: gap between the frames of a dense clip (ignored by ``"segment"``).
        num_clips: temporal views per video at test time (training always takes one clip).
    """

    num_frames: int = 8
    mode: str = "dense"
    stride: int = 16
    num_clips: int = 1

    def __post_init__(self):
        if self.mode not in SAMPLING_MODES:
            raise ValueError(f"sampling mode must be one of {SAMPLING_MODES}, got {self.mode!r}")
        for name in ("num_frames", "stride", "num_clips"):
            if getattr(self, name) < 1:
                raise ValueError(f"sampling {name} must be >= 1, got {getattr(self, name)}")

    @property
    def window(self) -> int:
        """Frames spanned by one dense clip."""
        return (self.num_frames - 1) * self.stride + 1

    def views(self, train: bool) -> int:
        return 1 if train else self.num_clips


def sample_rngs(seed: int, epoch: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent generators for frame sampling and for augmentation of one (epoch, index).

    Two streams so that changing an augmentation never changes which frames are read.
    """
    sequence = np.random.SeedSequence(entropy=seed, spawn_key=(epoch, index))
    frames, augment = sequence.spawn(2)
    return np.random.default_rng(frames), np.random.default_rng(augment)


def dense_train_indices(length: int, num_frames: int, stride: int, rng: np.random.Generator) -> np.ndarray:
    window = (num_frames - 1) * stride + 1
    start = int(rng.integers(0, max(length - window, 0) + 1))
    return np.minimum(start + stride * np.arange(num_frames), length - 1)


def dense_test_indices(length: int, num_frames: int, stride: int, num_clips: int) -> np.ndarray:
    window = (num_frames - 1) * stride + 1
    slack = max(length - window, 0)
    if num_clips == 1:
        starts = [slack // 2]
    else:  # round() like the original: its evenly spaced starts use Python's rounding
        starts = [round(slack * i / (num_clips - 1)) for i in range(num_clips)]
    offsets = stride * np.arange(num_frames)
    return np.minimum(np.asarray(starts)[:, None] + offsets[None, :], length - 1)


def _segment_bounds(length: int, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Segment i covers frames [start_i, end_i); empty when the video is shorter than T."""
    edges = (np.arange(num_frames + 1) * length) // num_frames
    return edges[:-1], edges[1:]


def segment_train_indices(length: int, num_frames: int, rng: np.random.Generator) -> np.ndarray:
    starts, ends = _segment_bounds(length, num_frames)
    sizes = np.maximum(ends - starts, 1)
    return np.minimum(starts + rng.integers(0, sizes), length - 1)


def segment_test_indices(length: int, num_frames: int, num_clips: int) -> np.ndarray:
    # Clip j samples at fraction (j + 1/2) / num_clips of each segment, in exact integer
    # arithmetic: frame floor((i + (j + 1/2) / C) * L / T). One clip gives the segment centres.
    i = np.arange(num_frames)[None, :]
    j = np.arange(num_clips)[:, None]
    numerator = (2 * i * num_clips + 2 * j + 1) * length
    return np.minimum(numerator // (2 * num_frames * num_clips), length - 1)


def sample_frame_indices(length: int, config: SamplingConfig, train: bool,
                         rng: np.random.Generator | None = None) -> np.ndarray:
    """Frame indices of every temporal view, shape ``(views, num_frames)``, int64.

    ``rng`` is required for training and unused at test time.
    """
    if length < 1:
        raise ValueError(f"cannot sample frames from a video of length {length}")
    if train:
        if rng is None:
            raise ValueError("training sampling needs a random generator (see sample_rngs)")
        if config.mode == "dense":
            clip = dense_train_indices(length, config.num_frames, config.stride, rng)
        else:
            clip = segment_train_indices(length, config.num_frames, rng)
        return clip[None, :].astype(np.int64)
    if config.mode == "dense":
        views = dense_test_indices(length, config.num_frames, config.stride, config.num_clips)
    else:
        views = segment_test_indices(length, config.num_frames, config.num_clips)
    return views.astype(np.int64)
