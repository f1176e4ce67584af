"""Decoding with NVIDIA DALI: only the needed frames, on the GPU (NVDEC) when there is one,
decoded ahead of the training step.

A DALI pipeline takes each video's bytes and its frame indices (the same indices the CPU
backend reads, from :meth:`VideoDataset.plan`) and returns uint8 ``(F, H, W, 3)`` frames. With
a GPU (``device`` = a CUDA index) the decoder is DALI's "mixed" one and the frames stay in GPU
memory, where the package's transforms (crop, resize, colour ops, normalisation) then run.
Without a GPU (``device=None``) the same pipeline uses DALI's CPU decoder, which reads
VP8/VP9/MJPEG but not H.264: enough to test that both backends agree.

Why the transforms are torch and not DALI operators: one implementation of every augmentation
for both backends, so that the backends can only differ by decoding rounding.

How a stream of batches flows (:meth:`DaliDecoder.stream`):

* a feeder thread checks each video (the demux pass of
  :class:`~vita_clip.data.decode_cpu.VideoReader`, once per file: frame count, codec, display
  rotation), reads its bytes and plans its frames, up to ``prefetch`` batches ahead;
* DALI's pipelined asynchronous executor pulls those batches through an external source and
  keeps ``prefetch`` of them decoding while the caller trains on the previous one;
* every output is copied into a tensor torch owns (DALI reuses its buffers) and turned upright
  by the file's display rotation (DALI ignores it), then transformed.

Videos DALI cannot decode (codecs its decoder lacks, or a run that fails on them) are decoded
by the CPU decoder, with the same frame indices; a video neither can read is skipped with a
report (or raised under ``on_error="raise"``). A DALI pipeline is unusable after an error, so
a failing batch is decoded again video by video, and the batches already queued are fed to a
fresh pipeline.
"""
from __future__ import annotations

import io
import logging
import os
import queue
import re
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import av
import numpy as np
import torch

from .dataset import padding_note
from .decode_cpu import VideoReader, check_video_file
from .errors import DecoderUnavailable, SkippedSample, VideoDataError

logger = logging.getLogger(__name__)

# What DALI 2.4's decoders read (its docs; checked on the CPU: "Codec 27 (h264) is not supported"):
DALI_CPU_CODECS = ("vp8", "vp9", "mjpeg")
DALI_GPU_CODECS = DALI_CPU_CODECS + ("h264", "hevc", "av1", "mpeg4")
# Batches decoding ahead of the one being trained on (DALI's prefetch queue depth).
PREFETCH = 2
_FEEDER_POLL_S = 0.1  # how often a blocked feeder looks whether the stream was closed


def dali_codecs(device: int | None) -> tuple[str, ...]:
    return DALI_CPU_CODECS if device is None else DALI_GPU_CODECS


def _check_codec(path: str, codec: str, device: int | None) -> None:
    if codec not in dali_codecs(device):
        where = "CPU decoder" if device is None else "GPU decoder"
        raise VideoDataError(path, f"DALI's {where} cannot decode {codec} (only {', '.join(dali_codecs(device))}): "
                             "use data.backend=cpu" + (" or a GPU" if device is None else ""))


def _dali_error_detail(error: BaseException) -> str:
    """The line of a DALI error that says what went wrong (its messages wrap it in a traceback)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines and lines.index("encountered:") + 1 < len(lines):
        line = lines[lines.index("encountered:") + 1]
    else:
        line = lines[-1] if lines else type(error).__name__
    return re.sub(r'^Assert on ".*?" failed: ', "", line)


@dataclass(frozen=True)
class _VideoInfo:
    """What the first check of a file learns (kept for the run: files are not indexed again)."""

    num_frames: int
    codec: str
    turns: int  # quarter turns (counter-clockwise) that show it upright
    notes: tuple[str, ...]  # what is odd about it (cut short)


@dataclass
class _Job:
    """One video of a batch on its way to a sample."""

    position: int  # in the batch
    index: int  # in the dataset
    path: str
    frame_indices: np.ndarray  # (views, T)
    augment_rng: np.random.Generator
    turns: int
    notes: list[str]
    data: np.ndarray | None = None  # the file's bytes, for DALI
    frames: torch.Tensor | VideoDataError | None = None  # uint8 (views * T, H, W, 3) once decoded, or why not


@dataclass
class _Batch:
    """One batch: placeholders for its samples, the jobs that fill them, or the error to raise."""

    samples: list
    jobs: list[_Job] = field(default_factory=list)
    error: BaseException | None = None

    @property
    def dali_jobs(self) -> list[_Job]:
        """The jobs DALI decodes (the others were decoded on the CPU while being prepared)."""
        return [job for job in self.jobs if job.data is not None]


_END = object()


class _Feeder:
    """A thread that prepares batches (checks, file bytes, frame plans, CPU decodes) ahead."""

    def __init__(self, prepare, key_batches: Iterable[list[tuple[int, int]]], depth: int):
        self._prepare, self._keys = prepare, key_batches
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="vita-clip-dali-feeder", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=_FEEDER_POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for keys in self._keys:
                if self._stop.is_set():
                    return
                batch = self._prepare(keys)
                if not self._put(batch) or batch.error is not None:
                    return
        except BaseException as e:  # noqa: BLE001 - raised again in the consumer, at this batch
            self._put(_Batch(samples=[], error=e))
            return
        self._put(_END)

    def get(self):
        """The next prepared batch, or ``_END``."""
        while True:
            try:
                return self._queue.get(timeout=_FEEDER_POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return _END  # stopped (closed stream)

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a put
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join()


def _build_pipeline(batch_size: int, device: int | None, num_threads: int, source=None, prefetch: int = 1):
    """A decoding pipeline on DALI's default (dynamic, pipelined, asynchronous) executor.

    With ``source`` (a callable returning ``(bytes list, frame-index list)`` per batch, raising
    ``StopIteration`` at the end), DALI pulls the batches itself, ``prefetch`` of them ahead;
    without, the inputs ``"encoded"`` and ``"frames"`` are fed with ``feed_input`` before each run."""
    from nvidia.dali import fn, pipeline_def, types

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device,
                  exec_async=True, exec_pipelined=True, prefetch_queue_depth=prefetch)
    def decode():
        if source is None:
            encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            frames = fn.external_source(name="frames", dtype=types.INT32, ndim=1)
        else:
            encoded, frames = fn.external_source(source=source, num_outputs=2, batch=True,
                                                 dtype=[types.UINT8, types.INT32], ndim=[1, 1])
        # pad_mode "none": a frame past the end is an error, not a black frame
        return fn.decoders.video(encoded, device="cpu" if device is None else "mixed", frames=frames, pad_mode="none")

    pipeline = decode()
    pipeline.build()
    return pipeline


def _owned_frames(output, turns: int) -> torch.Tensor:
    """One sample of a DALI output as a tensor torch owns (DALI's buffer may be reused by a later
    run), turned upright: ``(F, H, W, 3)``, on the device DALI decoded it on."""
    frames = torch.from_dlpack(output)
    # rot90 copies (it flips); otherwise clone
    return torch.rot90(frames, turns, dims=(1, 2)).contiguous() if turns else frames.clone()


def _tiny_h264_clip() -> bytes:
    """A 4-frame 64x64 H.264 MP4, made in memory: what the start-up check decodes."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for k in range(4):
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), 40 * k, dtype=np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


_GPUS_CHECKED: set[int] = set()


def check_gpu_decoding(device: int, num_threads: int = 1) -> None:
    """Decode a tiny generated H.264 clip with DALI's GPU decoder (NVDEC) on ``device`` (once per
    process and device); raise :class:`DecoderUnavailable` (one line, naming the fix) if that
    cannot be done here."""
    if device in _GPUS_CHECKED:
        return
    fix = "use data.backend=cpu (PyAV decoding in DataLoader workers)"
    try:
        pipeline = _build_pipeline(1, device, num_threads)
        pipeline.feed_input("encoded", [np.frombuffer(_tiny_h264_clip(), dtype=np.uint8)])
        pipeline.feed_input("frames", [np.array([0, 3], dtype=np.int32)])
        (output,) = pipeline.run()
        frames = _owned_frames(output[0], 0).cpu()
    except Exception as e:  # noqa: BLE001 - whatever DALI raises, GPU decoding does not work here
        raise DecoderUnavailable(f"DALI cannot decode videos on GPU {device} (NVDEC): {_dali_error_detail(e)}; "
                                 f"{fix}") from None
    # frames 0 and 3 are flat grey levels 0 and 120 (the CPU decoder reads exactly those)
    levels = frames.reshape(frames.shape[0], -1).float().mean(1).tolist() if frames.ndim == 4 else []
    if tuple(frames.shape) != (2, 64, 64, 3) or abs(levels[0]) > 8 or abs(levels[1] - 120) > 8:
        raise DecoderUnavailable(f"DALI's GPU decoder on GPU {device} decodes a 64x64 test clip wrongly (frames "
                                 f"{tuple(frames.shape)}, mean levels {[round(v) for v in levels]}, expected "
                                 f"(2, 64, 64, 3) at [0, 120]); {fix}")
    _GPUS_CHECKED.add(device)


class DaliDecoder:
    """Decode and transform batches of a :class:`~vita_clip.data.dataset.VideoDataset` with DALI.

    Args:
        dataset: supplies the videos, the frame indices and the transforms (not needed by
            :meth:`decode_frames`).
        batch_size: most videos per DALI run.
        device: CUDA device index, or ``None`` for DALI's CPU decoder. With a device, a tiny
            clip is decoded at once, so that a machine without NVDEC fails here, clearly
            (:class:`~vita_clip.data.errors.DecoderUnavailable`).
        num_threads: DALI worker threads (default: up to 4 CPU cores).
        prefetch: batches decoded ahead of the one being used (>= 1).
    """

    def __init__(self, dataset, batch_size: int, device: int | None = None, num_threads: int | None = None,
                 prefetch: int = PREFETCH):
        try:
            import nvidia.dali  # noqa: F401
        except ImportError:
            raise DecoderUnavailable("backend 'dali' needs NVIDIA DALI (pip install nvidia-dali-cuda120); "
                                     "or use data.backend=cpu") from None
        if prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.device = device
        self.num_threads = num_threads or max(1, min(4, os.cpu_count() or 1))
        self.prefetch = prefetch
        self._videos: dict[str, _VideoInfo] = {}  # path -> what its first check found
        self._cpu_codecs_logged: set[str] = set()
        self._single = None  # the pipeline that decodes one video at a time
        self.batches_fed = 0  # batches handed to DALI so far (all streams)
        if device is not None:
            check_gpu_decoding(device, self.num_threads)

    # -- checking and planning (the feeder thread)

    def _inspect(self, path: str) -> _VideoInfo:
        info = self._videos.get(path)
        if info is None:
            with VideoReader(path) as reader:
                turns = 0
                try:
                    with av.open(path) as container:  # the display rotation comes with a decoded frame
                        stream = container.streams.video[0]
                        stream.thread_count = 1
                        turns = next((reader.display_turns(frame) for frame in container.decode(stream)), 0)
                except (av.error.FFmpegError, OSError) as e:
                    raise VideoDataError(path, f"decoding failed ({e}); the file is probably truncated or corrupt") from None
                info = _VideoInfo(reader.num_frames, reader.index.codec, turns, tuple(reader.notes))
            self._videos[path] = info
        return info

    def _plan(self, position: int, index: int, epoch: int) -> _Job:
        path = self.dataset.entries[index].path
        check_video_file(path)
        info = self._inspect(path)
        frame_indices, augment_rng = self.dataset.plan(index, info.num_frames, epoch)
        notes = list(info.notes)
        padding = padding_note(frame_indices, info.num_frames)
        if padding:
            notes.append(padding)
        job = _Job(position, index, path, frame_indices, augment_rng, info.turns, notes)
        if info.codec in dali_codecs(self.device):
            try:
                job.data = np.fromfile(path, dtype=np.uint8)
            except OSError as e:
                raise VideoDataError(path, f"cannot read the file ({e.strerror or e})") from None
        else:
            if info.codec not in self._cpu_codecs_logged:
                self._cpu_codecs_logged.add(info.codec)
                logger.warning("DALI's %s decoder cannot decode %s: such videos (e.g. %s) are decoded by the CPU "
                               "decoder", "CPU" if self.device is None else "GPU", info.codec, path)
            job.frames = self._decode_on_cpu(job)
        return job

    def _decode_on_cpu(self, job: _Job) -> torch.Tensor:
        """The job's frames from the CPU decoder (upright already)."""
        with VideoReader(job.path, threads=self.dataset.config.decode_threads) as reader:
            return torch.from_numpy(reader.read(job.frame_indices.reshape(-1)))

    def _prepare(self, keys: list[tuple[int, int]]) -> _Batch:
        batch = _Batch(samples=[None] * len(keys))
        for position, (index, epoch) in enumerate(keys):
            try:
                batch.jobs.append(self._plan(position, index, epoch))
            except VideoDataError as e:
                if self.dataset.config.on_error == "raise":
                    batch.error = e
                    return batch
                batch.samples[position] = SkippedSample.from_error(e, index)
        return batch

    # -- decoding (the caller's thread)

    def decode_frames(self, path: str | os.PathLike, indices) -> torch.Tensor:
        """The frames at ``indices`` of one file, decoded by DALI in one run: uint8 ``(N, H, W, 3)``
        (upright, owned by torch); :class:`VideoDataError` if DALI cannot decode them."""
        path = str(path)
        check_video_file(path)
        info = self._inspect(path)
        _check_codec(path, info.codec, self.device)
        indices = np.asarray(indices, dtype=np.int32).reshape(-1)
        job = _Job(0, -1, path, indices[None], np.random.default_rng(0), info.turns, [],
                   data=np.fromfile(path, dtype=np.uint8))
        frames = self._decode_singly(job)
        if isinstance(frames, VideoDataError):
            raise frames
        return frames

    def _decode_singly(self, job: _Job) -> torch.Tensor | VideoDataError:
        """One video in one synchronous run of a batch-1 pipeline (rebuilt after a failure)."""
        if self._single is None:
            self._single = _build_pipeline(1, self.device, self.num_threads)
        try:
            self._single.feed_input("encoded", [job.data])
            self._single.feed_input("frames", [job.frame_indices.reshape(-1).astype(np.int32)])
            (output,) = self._single.run()
            return _owned_frames(output[0], job.turns)
        except RuntimeError as e:
            self._single = None
            return VideoDataError(job.path, f"DALI could not decode the frames ({_dali_error_detail(e)})")

    def _recover(self, jobs: list[_Job]) -> None:
        """After a failed run: each video alone, then on the CPU decoder if DALI still fails."""
        for job in jobs:
            frames = self._decode_singly(job)
            if isinstance(frames, VideoDataError):
                dali_error = frames
                try:
                    frames = self._decode_on_cpu(job)
                except (VideoDataError, IndexError) as e:  # IndexError: frames the file does not have
                    reason = e.reason if isinstance(e, VideoDataError) else str(e)
                    frames = VideoDataError(job.path, f"{dali_error.reason}; the CPU decoder could not either ({reason})")
                else:
                    logger.warning("%s; decoded by the CPU decoder instead", dali_error)
            job.frames = frames

    def stream(self, key_batches: Iterable[list[tuple[int, int]]]) -> Iterator[list[dict | SkippedSample]]:
        """The samples of each list of ``(index, epoch)`` keys, in order, a :class:`SkippedSample`
        for each bad video (collated by :func:`~vita_clip.data.batching.collate_clips`); the
        next ``prefetch`` batches decode while the caller uses one. Closing the iterator (or an
        error) stops the feeder thread and the pipeline."""
        feeder = _Feeder(self._prepare, key_batches, self.prefetch)
        pending: deque[_Batch] = deque()  # pulled from the feeder, not yet handed out
        replay: deque[_Batch] = deque()  # to feed again after a failed run
        ended = False

        def source():
            nonlocal ended
            if replay:
                return self._dali_inputs(replay.popleft())
            while not ended:
                batch = feeder.get()
                if batch is _END:
                    ended = True
                    break
                pending.append(batch)
                if batch.error is not None:
                    ended = True
                    break
                if batch.dali_jobs:
                    self.batches_fed += 1
                    return self._dali_inputs(batch)
            raise StopIteration

        pipeline = None
        try:
            pipeline = _build_pipeline(self.batch_size, self.device, self.num_threads, source, self.prefetch)
            pipeline.schedule_run()  # DALI pulls and starts `prefetch` batches
            while pending:
                batch = pending.popleft()
                if batch.error is not None:
                    raise batch.error
                jobs = batch.dali_jobs
                if jobs:
                    try:
                        (output,) = pipeline.outputs()
                        for k, job in enumerate(jobs):
                            job.frames = _owned_frames(output[k], job.turns)
                    except RuntimeError:
                        pipeline = None  # unusable: the batches in flight go to a fresh one
                        self._recover(jobs)
                        replay.extend(b for b in pending if b.dali_jobs)
                        pipeline = _build_pipeline(self.batch_size, self.device, self.num_threads, source,
                                                   self.prefetch)
                        pipeline.schedule_run()
                    else:
                        pipeline.schedule_run()  # the next batch starts decoding before this one is used
                yield self._finish(batch)
        finally:
            feeder.close()
            del pipeline

    @staticmethod
    def _dali_inputs(batch: _Batch) -> tuple[list[np.ndarray], list[np.ndarray]]:
        jobs = batch.dali_jobs
        return [job.data for job in jobs], [job.frame_indices.reshape(-1).astype(np.int32) for job in jobs]

    def _finish(self, batch: _Batch) -> list[dict | SkippedSample]:
        raise_errors = self.dataset.config.on_error == "raise"
        device = None if self.device is None else torch.device("cuda", self.device)
        for job in batch.jobs:
            if isinstance(job.frames, VideoDataError):
                if raise_errors:
                    raise job.frames
                batch.samples[job.position] = SkippedSample.from_error(job.frames, job.index)
                continue
            frames = job.frames if device is None else job.frames.to(device)
            sample = self.dataset.finish(job.index, frames, job.frame_indices, job.augment_rng)
            if job.notes:
                sample["odd"] = [self.dataset.locate(SkippedSample(job.index, job.path, note)) for note in job.notes]
            batch.samples[job.position] = sample
        return batch.samples
