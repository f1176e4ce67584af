"""Decoding with NVIDIA DALI: only the needed frames, on the GPU (NVDEC) when there is one.

A tiny DALI pipeline takes each video's bytes and its frame indices (the same indices the CPU
backend reads, from :meth:`VideoDataset.plan`) and returns uint8 ``(F, H, W, 3)`` frames. With
a GPU (``device`` = a CUDA index) the decoder is DALI's "mixed" one and the frames stay in GPU
memory: they reach torch through DLPack (no host copy) and the package's transforms (crop,
resize, colour ops, normalisation) run on the GPU. Without a GPU (``device=None``) the same
pipeline uses DALI's CPU decoder, which reads VP8/VP9/MJPEG but not H.264: enough to test
that both backends agree.

Why the transforms are torch and not DALI operators: one implementation of every augmentation
for both backends, so that the backends can only differ by decoding rounding.

A DALI pipeline is unusable after an error, so each video is checked first (the demux pass of
:class:`~vita_clip.data.decode_cpu.VideoReader`, which also gives the frame count needed to
sample), and a batch that still fails is rebuilt and decoded video by video to find the bad
file(s).
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np
import torch

from .decode_cpu import VideoReader, check_video_file
from .errors import SkippedSample, VideoDataError

# DALI 2.4's CPU video decoder has no H.264/HEVC/MPEG-4/AV1 decoders (checked: "Codec 27 (h264) is not supported").
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")


def _check_codec(path: str, codec: str, device: int | None) -> None:
    if device is None and codec not in DALI_CPU_CODECS:
        raise VideoDataError(path, f"DALI's CPU decoder cannot decode {codec} (only {', '.join(DALI_CPU_CODECS)}): "
                             "use backend='cpu' or a GPU")


@dataclass
class _Job:
    """One video of a batch on its way through DALI."""

    position: int  # in the batch
    index: int  # in the dataset
    path: str
    data: np.ndarray  # the file's bytes
    frame_indices: np.ndarray  # (views, T)
    augment_rng: np.random.Generator


def _build_pipeline(batch_size: int, device: int | None, num_threads: int):
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device,
                  exec_async=False, exec_pipelined=False, prefetch_queue_depth=1)
    def decode():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        # pad_mode "none": a frame past the end is an error, not a black frame
        return fn.decoders.video(encoded, device="cpu" if device is None else "mixed", frames=frames, pad_mode="none")

    pipeline = decode()
    pipeline.build()
    return pipeline


class DaliDecoder:
    """Decode and transform batches of a :class:`~vita_clip.data.dataset.VideoDataset` with DALI.

    Args:
        dataset: supplies the videos, the frame indices and the transforms.
        batch_size: most videos per DALI run.
        device: CUDA device index, or ``None`` for DALI's CPU decoder.
        num_threads: DALI worker threads (default: up to 4 CPU cores).
    """

    def __init__(self, dataset, batch_size: int, device: int | None = None, num_threads: int | None = None):
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self._num_frames: dict[str, int] = {}  # path -> frame count, from the first check
        self._pipeline = _build_pipeline(batch_size, device, self.num_threads)

    def _check(self, path: str) -> tuple[np.ndarray, int]:
        """The file's bytes and frame count; :class:`VideoDataError` if DALI should not see it."""
        check_video_file(path)
        try:
            data = np.fromfile(path, dtype=np.uint8)
        except OSError as e:
            raise VideoDataError(path, f"cannot read the file ({e.strerror or e})") from None
        if path not in self._num_frames:
            with VideoReader(io.BytesIO(data.tobytes()), name=path) as reader:
                _check_codec(path, reader.index.codec, self.device)
                self._num_frames[path] = reader.num_frames
        return data, self._num_frames[path]

    def _run(self, encoded: list[np.ndarray], frames: list[np.ndarray]) -> list[torch.Tensor]:
        self._pipeline.feed_input("encoded", encoded)
        self._pipeline.feed_input("frames", frames)
        (output,) = self._pipeline.run()
        # DLPack: the frames stay where DALI decoded them (GPU memory with a GPU)
        return [torch.from_dlpack(output[k]) for k in range(len(encoded))]

    def _decode(self, jobs: list[_Job]) -> list[torch.Tensor | VideoDataError]:
        """Decode all jobs in one run; after a failure, one by one to name the bad files."""
        frames = [job.frame_indices.reshape(-1).astype(np.int32) for job in jobs]
        try:
            return self._run([job.data for job in jobs], frames)
        except RuntimeError:
            self._pipeline = _build_pipeline(self.batch_size, self.device, self.num_threads)
        results: list[torch.Tensor | VideoDataError] = []
        for job, indices in zip(jobs, frames):
            try:  # clone: the next run reuses DALI's output buffers
                results.append(self._run([job.data], [indices])[0].clone())
            except RuntimeError as e:
                detail = str(e).strip().splitlines()
                results.append(VideoDataError(job.path, f"DALI could not decode the frames "
                                                        f"({detail[-1] if detail else e})"))
                self._pipeline = _build_pipeline(self.batch_size, self.device, self.num_threads)
        return results

    def decode_samples(self, indices: list[int], epoch: int) -> list[dict | SkippedSample]:
        """The samples of dataset items ``indices`` for ``epoch``, a :class:`SkippedSample` for
        each bad video (collated by :func:`~vita_clip.data.batching.collate_clips`)."""
        samples: list[dict | SkippedSample | None] = [None] * len(indices)
        jobs: list[_Job] = []
        raise_errors = self.dataset.config.on_error == "raise"
        for position, index in enumerate(indices):
            path = self.dataset.entries[index].path
            try:
                data, num_frames = self._check(path)
            except VideoDataError as e:
                if raise_errors:
                    raise
                samples[position] = SkippedSample.from_error(e, index)
                continue
            frame_indices, augment_rng = self.dataset.plan(index, num_frames, epoch)
            jobs.append(_Job(position, index, path, data, frame_indices, augment_rng))
        for job, frames in zip(jobs, self._decode(jobs) if jobs else []):
            if isinstance(frames, VideoDataError):
                if raise_errors:
                    raise frames
                samples[job.position] = SkippedSample.from_error(frames, job.index)
            else:
                samples[job.position] = self.dataset.finish(job.index, frames, job.frame_indices, job.augment_rng)
        return samples

