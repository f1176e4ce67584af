"""Batches of a dataset from either decoding backend: the one place that chooses between them.

* ``cpu``: a torch ``DataLoader`` over the dataset (PyAV decoding in the workers);
* ``dali``: :class:`~vita_clip.data.decode_dali.DaliDecoder` decodes in the main process, on
  the GPU when there is one, a few batches ahead of the one in use; the same transforms then run
  where the frames are.

Both take lists of ``(index, epoch)`` keys and yield the same collated batches::

    {"video": (B, T, 3, S, S) or (B, V, T, 3, S, S), "label": (B,) int64, "index": (B,) int64,
     "skipped": [SkippedSample, ...]}
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import torch
from torch.utils.data import DataLoader

from .errors import DecoderUnavailable, SkippedSample

logger = logging.getLogger(__name__)


def collate_clips(samples: list[dict | SkippedSample]) -> dict:
    """Stack samples into a batch; skipped samples go to ``batch["skipped"]`` (``video`` is
    ``None`` when all of them were skipped)."""
    kept = [s for s in samples if not isinstance(s, SkippedSample)]
    skipped = [s for s in samples if isinstance(s, SkippedSample)]
    odd = [note for s in kept for note in s.get("odd", ())]  # used although odd (see VideoDataset.load)
    if not kept:
        return {"video": None, "label": None, "index": None, "skipped": skipped, "odd": odd}
    return {
        "video": torch.stack([s["video"] for s in kept]),
        "label": torch.tensor([s["label"] for s in kept], dtype=torch.int64),
        "index": torch.tensor([s["index"] for s in kept], dtype=torch.int64),
        "skipped": skipped,
        "odd": odd,
    }


def resolve_backend(backend: str) -> str:
    """``"auto"`` -> ``"dali"`` when CUDA and DALI are usable, else ``"cpu"``."""
    if backend != "auto":
        return backend
    if not torch.cuda.is_available():
        return "cpu"
    try:
        import nvidia.dali  # noqa: F401
    except ImportError:
        return "cpu"
    return "dali"


class DaliBatches:
    """Collated batches decoded by DALI for the key lists of ``batch_sampler``, ``prefetch``
    batches decoding ahead of the one in use (see :meth:`DaliDecoder.stream`)."""

    def __init__(self, dataset, batch_sampler: Iterable[list[tuple[int, int]]], batch_size: int,
                 device: int | None, prefetch: int | None = None):
        from .decode_dali import PREFETCH, DaliDecoder  # DALI is an optional dependency

        self.batch_sampler = batch_sampler
        self.decoder = DaliDecoder(dataset, batch_size=batch_size, device=device, prefetch=prefetch or PREFETCH)

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __iter__(self) -> Iterator[dict]:
        stream = self.decoder.stream(self.batch_sampler)
        try:
            for samples in stream:
                yield collate_clips(samples)
        finally:
            stream.close()  # at once, not when collected: stops the decoding ahead


def batch_stream(dataset, batch_sampler: Iterable[list[tuple[int, int]]], batch_size: int, *,
                 backend: str | None = None, num_workers: int = 0, pin_memory: bool = False,
                 persistent_workers: bool = False, prefetch_factor: int | None = None,
                 device: int | None = -1) -> DataLoader | DaliBatches:
    """Collated batches of ``dataset`` for the ``(index, epoch)`` key lists of ``batch_sampler``
    (at most ``batch_size`` keys each), decoded by ``backend`` (default: the dataset config's).

    ``num_workers``, ``pin_memory``, ``persistent_workers``, ``prefetch_factor``: as for
    ``DataLoader`` (CPU backend only; for DALI ``prefetch_factor`` is the number of batches
    decoded ahead, default 2). ``device``: DALI backend: CUDA device index, ``-1`` for the current
    one (``None`` without CUDA: DALI's CPU decoder)."""
    asked = backend or dataset.config.backend
    backend = resolve_backend(asked)
    if backend == "dali":
        if device == -1:
            device = torch.cuda.current_device() if torch.cuda.is_available() else None
        try:
            return DaliBatches(dataset, batch_sampler, batch_size, device, prefetch_factor)
        except DecoderUnavailable as e:
            if asked != "auto":
                raise
            logger.warning("backend 'auto': %s; decoding with the CPU backend instead", e)
            backend = "cpu"
    if backend == "cpu":
        return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=num_workers, collate_fn=collate_clips,
                          pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0,
                          prefetch_factor=prefetch_factor if num_workers > 0 else None)
    raise ValueError(f"backend must be 'cpu', 'dali' or 'auto', got {backend!r}")
