"""The video dataset: a list of videos, how to sample and transform them, and what to do with
bad files.

:class:`VideoDataset` is map-style, so it works with any sampler (``DistributedSampler``
included) and in DataLoader workers. A sample is a dict::

    {"video": float32 (T, 3, S, S) in training, (V, T, 3, S, S) at test, "label": int, "index": int}

with ``V = num_clips * num_crops``. Everything random about sample ``i`` comes from
``(config.seed, epoch, i)``: the same epoch gives the same clip in any worker, on any rank,
with any backend. Set the epoch with :meth:`VideoDataset.set_epoch`, or pass ``(index, epoch)``
pairs as keys (what :class:`~vita_clip.data.loader.VideoLoader` does, so that persistent
workers see the right epoch too).

Under ``on_error="skip"`` (the default) a bad video gives a :class:`SkippedSample` instead of a
sample; :func:`~vita_clip.data.batching.collate_clips` moves it to the batch's ``"skipped"``
list, and the loader lists all of them at the end of the epoch. Bad list lines are dropped
when the list is read and kept in :attr:`VideoDataset.list_skipped`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from .classes import read_class_names
from .config import DataConfig
from .decode_cpu import VideoReader
from .errors import SkippedSample, VideoDataError, format_skip_report
from .lists import read_video_list
from .sampling import sample_frame_indices, sample_rngs
from .transforms import transform_clip

logger = logging.getLogger(__name__)


def plan_clip(config: DataConfig, train: bool, index: int, epoch: int, num_video_frames: int
              ) -> tuple[np.ndarray, np.random.Generator]:
    """Frame indices ``(temporal views, T)`` of sample ``index`` in ``epoch`` and the generator of
    its augmentation: a pure function of its arguments, shared by every backend."""
    frames_rng, augment_rng = sample_rngs(config.seed, epoch, index)
    return sample_frame_indices(num_video_frames, config.sampling, train, frames_rng), augment_rng


def padding_note(frame_indices: np.ndarray, num_video_frames: int) -> str | None:
    """A note when a clip repeats frames because the video is shorter than the clip."""
    repeats = sum(len(view) - len(set(view.tolist())) for view in frame_indices)
    if not repeats:
        return None
    return (f"only {num_video_frames} frames, fewer than a clip of {frame_indices.shape[1]} needs: "
            f"{repeats} frame(s) repeated (padded as the original code does)")


def load_clip(path: str | os.PathLike, config: DataConfig | None = None, train: bool = False, index: int = 0,
              epoch: int = 0, notes: list[str] | None = None) -> torch.Tensor:
    """One video file, decoded on the CPU, as model input: ``(T, 3, S, S)`` in training,
    ``(V, T, 3, S, S)`` at test. Raises :class:`VideoDataError` naming the file if it cannot be read.
    What is odd about a file that is still used (cut short, padded) is appended to ``notes``."""
    config = config or DataConfig()
    with VideoReader(path, threads=config.decode_threads) as reader:
        frame_indices, augment_rng = plan_clip(config, train, index, epoch, reader.num_frames)
        frames = reader.read(frame_indices.reshape(-1))
        if notes is not None:
            notes += reader.notes
            padding = padding_note(frame_indices, reader.num_frames)
            if padding:
                notes.append(padding)
    video = transform_clip(torch.from_numpy(frames), frame_indices.shape[0], config.transform, train, augment_rng)
    return video[0] if train else video


class VideoDataset(torch.utils.data.Dataset):
    """Videos of a list file, decoded, sampled and transformed for a model.

    Args:
        list_file: ``path label`` or ``path,label`` lines (see :mod:`vita_clip.data.lists`).
        data_root: folder that relative paths in the list are joined onto.
        classes: the class names (a list, or a class-name file); labels are checked against
            them. ``None`` accepts any label >= 0.
        train: training sampling and augmentation, or deterministic multi-view test views.
        config: a :class:`DataConfig` (default: Vita-CLIP's recipe, skip-and-report).
    """

    def __init__(self, list_file: str | os.PathLike, data_root: str | os.PathLike = "",
                 classes: Sequence[str] | str | os.PathLike | None = None, train: bool = True,
                 config: DataConfig | None = None):
        self.config = config or DataConfig()
        self.list_file, self.data_root = str(list_file), str(data_root)
        self.train = train
        self.epoch = 0
        if isinstance(classes, (str, os.PathLike)):
            classes = read_class_names(classes)
        self.classes = list(classes) if classes is not None else None
        parsed = read_video_list(list_file, data_root, num_classes=len(self.classes) if self.classes else None,
                                 on_error=self.config.on_error)
        self.entries = parsed.entries
        self.list_skipped: list[SkippedSample] = parsed.skipped
        if self.list_skipped:
            logger.warning(format_skip_report(self.list_skipped, f"{list_file}: lines skipped"))
        if not self.entries:
            raise VideoDataError(str(list_file), "the list has no usable videos")

    def __len__(self) -> int:
        return len(self.entries)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random clips and augmentations :meth:`__getitem__` returns."""
        self.epoch = int(epoch)

    @property
    def num_views(self) -> int:
        """Views per video: 1 in training, ``num_clips * num_crops`` at test."""
        return 1 if self.train else self.config.sampling.num_clips * self.config.transform.num_crops

    # -- the steps of one sample, shared by every backend

    def plan(self, index: int, num_video_frames: int, epoch: int | None = None
             ) -> tuple[np.ndarray, np.random.Generator]:
        """Frame indices ``(temporal views, T)`` of sample ``index`` and the generator of its augmentation."""
        return plan_clip(self.config, self.train, index, self.epoch if epoch is None else epoch, num_video_frames)

    def finish(self, index: int, frames_u8: torch.Tensor, frame_indices: np.ndarray,
               augment_rng: np.random.Generator) -> dict:
        """Decoded uint8 frames ``(views * T, H, W, 3)`` (any device) -> the sample dict."""
        video = transform_clip(frames_u8, frame_indices.shape[0], self.config.transform, self.train, augment_rng)
        return {"video": video[0] if self.train else video, "label": self.entries[index].label, "index": index}

    def load(self, index: int, epoch: int | None = None) -> dict:
        """Sample ``index`` with the CPU decoder; raises :class:`VideoDataError` for a bad video.
        ``sample["odd"]`` lists what is odd about a video that was still used."""
        notes: list[str] = []
        video = load_clip(self.entries[index].path, self.config, self.train, index,
                          self.epoch if epoch is None else epoch, notes=notes)
        sample = {"video": video, "label": self.entries[index].label, "index": index}
        if notes:
            sample["odd"] = [self.locate(SkippedSample(index, self.entries[index].path, note)) for note in notes]
        return sample

    def locate(self, record: SkippedSample) -> SkippedSample:
        """``record`` with the list file and line of its video (for records made elsewhere, e.g. by DALI)."""
        if record.index is None or record.listed_at is not None or not 0 <= record.index < len(self.entries):
            return record
        entry = self.entries[record.index]
        return replace(record, listed_at=f"{entry.list_file}, line {entry.line}")

    def __getitem__(self, key: int | tuple[int, int]) -> dict | SkippedSample:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        try:
            return self.load(index, epoch)
        except VideoDataError as e:
            if self.config.on_error == "raise":
                raise
            record = self.locate(SkippedSample.from_error(e, index))
            logger.warning("skipping %s", record)
            return record


def check_readable(dataset: VideoDataset, sample: int = 8) -> int:
    """Open up to ``sample`` videos spread over the list; raise :class:`VideoDataError` (one line
    naming the list, the data root and an example path) if none of them can be read, so that a
    run with a wrong ``data_root`` stops at the start instead of training on nothing. Returns
    how many of those checked could be read (a warning says when some could not)."""
    count = len(dataset.entries)
    picks = sorted({int(i) for i in np.linspace(0, count - 1, num=min(sample, count))})
    failures: list[VideoDataError] = []
    for i in picks:
        try:
            VideoReader(dataset.entries[i].path).close()
        except VideoDataError as e:
            failures.append(e)
    readable = len(picks) - len(failures)
    if failures and not readable:
        example = failures[0]
        raise VideoDataError(dataset.list_file, f"none of the {len(picks)} videos checked (of {count}) can be read "
                             f"with data_root={dataset.data_root!r}; e.g. {example.path}: {example.reason}")
    if failures:
        logger.warning("%s: %d of %d videos checked cannot be read, e.g. %s", dataset.list_file, len(failures),
                       len(picks), failures[0])
    return readable


class EmptyStepGuard:
    """Counts consecutive training steps without a single readable sample; after ``limit`` of
    them the run stops with an error instead of stepping on nothing (0 disables the check).

    Under torchrun every process must take the same decision: give :meth:`count` the samples of
    the step summed over the processes, and :meth:`error` the skipped records gathered from all
    of them (what :func:`~vita_clip.engine.batches.check_step_samples` does), so that all stop
    together with the same message rather than one stopping while the others wait for it."""

    def __init__(self, limit: int):
        if limit < 0:
            raise ValueError(f"data.max_empty_steps must be >= 0, got {limit}")
        self.limit, self.empty = limit, 0

    def count(self, samples: int) -> bool:
        """Count a step with ``samples`` readable samples; True when the run must stop."""
        self.empty = self.empty + 1 if samples == 0 else 0
        return bool(self.limit) and self.empty >= self.limit

    def error(self, step: int, skipped: list[SkippedSample]) -> VideoDataError:
        last = f"; last skipped: {skipped[-1]}" if skipped else ""
        return VideoDataError("training data", f"{self.empty} consecutive steps (up to step {step + 1}) had no "
                              f"readable video (data.max_empty_steps={self.limit}){last}")

    def check(self, step: int, samples: int, skipped: list[SkippedSample]) -> None:
        """:meth:`count`, raising :meth:`error` when the run must stop (one process)."""
        if self.count(samples):
            raise self.error(step, skipped)
