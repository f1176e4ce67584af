"""Batches for training and evaluation, with epochs and a list of what was skipped.

:class:`VideoLoader` wraps a :class:`~vita_clip.data.dataset.VideoDataset` for either backend
(see :mod:`vita_clip.data.batching`); both yield the same batches for the same (seed, epoch,
sampler)::

    {"video": (B, T, 3, S, S) or (B, V, T, 3, S, S), "label": (B,) int64, "index": (B,) int64,
     "skipped": [SkippedSample, ...]}

Batches whose videos were all skipped are not yielded; every skipped video is listed in
:attr:`VideoLoader.skipped` (this epoch) and by :meth:`VideoLoader.report`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler, SequentialSampler

from .batching import batch_stream
from .dataset import VideoDataset
from .errors import SkippedSample, format_skip_report

logger = logging.getLogger(__name__)


class _WithEpoch(Sampler):
    """Yields ``(index, epoch)`` so that the epoch reaches persistent workers too."""

    def __init__(self, sampler):
        self.sampler, self.epoch = sampler, 0

    def __iter__(self):
        epoch = self.epoch
        return ((int(i), epoch) for i in self.sampler)

    def __len__(self):
        return len(self.sampler)


class VideoLoader:
    """Iterate over batches of a :class:`VideoDataset`, epoch by epoch.

    Args:
        dataset: the dataset (its ``config.backend`` is used unless ``backend`` is given).
        batch_size: videos per batch (fewer when some are skipped).
        shuffle: shuffle every epoch (default: ``dataset.train``), reproducibly from
            ``(config.seed, epoch)``. Ignored when a ``sampler`` is given.
        sampler: e.g. a ``DistributedSampler``; its ``set_epoch`` is called by :meth:`set_epoch`.
        drop_last: drop the last incomplete batch (default: ``dataset.train``).
        num_workers, pin_memory, persistent_workers, prefetch_factor: as for ``DataLoader``
            (CPU backend only).
        backend: ``"cpu"``, ``"dali"`` or ``"auto"`` (DALI when CUDA, DALI and NVDEC work, else
            CPU); :attr:`backend` says which one is used.
        device: DALI backend: CUDA device index (default: the current one); ``None`` on machines
            without CUDA (DALI's CPU decoder).

    Use::

        loader = VideoLoader(dataset, batch_size=8, num_workers=4)
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for batch in loader:
                ...
            print(loader.report())
    """

    def __init__(self, dataset: VideoDataset, batch_size: int, shuffle: bool | None = None,
                 sampler: Sampler | None = None, drop_last: bool | None = None, num_workers: int = 0,
                 pin_memory: bool = False, persistent_workers: bool = False, prefetch_factor: int | None = None,
                 backend: str | None = None, device: int | None = -1):
        self.dataset = dataset
        self.batch_size = batch_size
        self.epoch = 0
        self.skipped: list[SkippedSample] = []
        self.odd: list[SkippedSample] = []  # videos used although something is odd about them
        shuffle = dataset.train if shuffle is None else shuffle
        drop_last = dataset.train if drop_last is None else drop_last
        if sampler is None:
            self._generator = torch.Generator()
            sampler = RandomSampler(dataset, generator=self._generator) if shuffle else SequentialSampler(dataset)
        else:
            self._generator = None
        self.sampler = sampler
        # not a reference to self: a cycle would leave persistent workers to the garbage
        # collector, whose shutdown of them waits for timeouts
        self._keys = _WithEpoch(sampler)
        self._batches = batch_stream(dataset, BatchSampler(self._keys, batch_size, drop_last), batch_size,
                                     backend=backend, num_workers=num_workers, pin_memory=pin_memory,
                                     persistent_workers=persistent_workers, prefetch_factor=prefetch_factor,
                                     device=device)
        self.backend = "cpu" if isinstance(self._batches, DataLoader) else "dali"  # what "auto" chose

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch``: new random clips, a new shuffle order, a fresh skip list."""
        self.epoch = int(epoch)
        self._keys.epoch = self.epoch
        self.dataset.set_epoch(epoch)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self._batches)

    def __iter__(self) -> Iterator[dict]:
        self.skipped, self.odd = [], []
        if self._generator is not None:
            self._generator.manual_seed(int(np.random.SeedSequence([self.dataset.config.seed, self.epoch])
                                            .generate_state(1)[0]))
        batches = iter(self._batches)
        try:
            for batch in batches:
                batch["skipped"] = [self.dataset.locate(s) for s in batch["skipped"]]
                self.skipped.extend(batch["skipped"])
                self.odd.extend(batch.get("odd", ()))
                if batch["video"] is not None:
                    yield batch
        finally:
            # After an error or an early break torch leaves its worker processes to the garbage
            # collector, whose shutdown waits seconds per worker: stop them now.
            shutdown = getattr(batches, "_shutdown_workers", None)
            if shutdown is not None and not self._batches.persistent_workers:
                shutdown()
            close = getattr(batches, "close", None)  # DALI's batches: stop decoding ahead now
            if close is not None:
                close()
        if self.skipped:
            logger.warning(format_skip_report(self.skipped, f"epoch {self.epoch}: videos skipped"))
        if self.odd:
            logger.warning(format_skip_report(self.odd, f"epoch {self.epoch}: videos used but odd"))

    def report(self) -> str:
        """Bad list lines of the dataset, the videos skipped in the last epoch and those used
        although odd (cut short, padded), one per line."""
        return "\n".join([format_skip_report(self.dataset.list_skipped, "list lines skipped"),
                          format_skip_report(self.skipped, f"videos skipped in epoch {self.epoch}"),
                          format_skip_report(self.odd, f"videos used but odd in epoch {self.epoch}")])
