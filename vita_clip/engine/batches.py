"""Training micro-batches, step by step, from either data backend."""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..data.batching import batch_stream
from ..data.dataset import EmptyStepGuard, VideoDataset
from ..data.errors import SkippedSample
from .distributed import DistInfo, all_gather_lists, all_reduce_sum
from .sampler import StepSampler


class MicroBatchSampler(torch.utils.data.Sampler):
    """Cuts each optimizer step's ``(index, epoch)`` keys into micro-batches (the last one of a
    step may be smaller), so that no micro-batch spans two steps."""

    def __init__(self, steps: StepSampler, micro_batch_size: int):
        self.steps, self.micro = steps, micro_batch_size
        self.per_step = steps.batch // steps.world
        self.micro_per_step = math.ceil(self.per_step / micro_batch_size)

    def __iter__(self):
        keys = iter(self.steps)
        for _ in range(self.steps.start, self.steps.total):
            step_keys = [next(keys) for _ in range(self.per_step)]
            for i in range(0, self.per_step, self.micro):
                yield step_keys[i:i + self.micro]

    def __len__(self) -> int:
        return (self.steps.total - self.steps.start) * self.micro_per_step


class StepBatches:
    """Yields ``(step, micro_batches, skipped, odd)`` for this process: the micro-batch dicts of
    one optimizer step (see :func:`~vita_clip.data.batching.collate_clips`), the samples skipped
    in it and those used although odd (a file cut short, a padded clip), each record naming the
    list file and line of its video."""

    def __init__(self, dataset: VideoDataset, steps: StepSampler, micro_batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, device: torch.device | None = None):
        self.dataset, self.steps = dataset, steps
        self.micro = MicroBatchSampler(steps, micro_batch_size)
        dali_device = device.index if device is not None and device.type == "cuda" else None
        self.batches = batch_stream(dataset, self.micro, micro_batch_size, num_workers=num_workers,
                                    pin_memory=pin_memory, device=dali_device)

    def __iter__(self) -> Iterator[tuple[int, list[dict], list[SkippedSample], list[SkippedSample]]]:
        batches = iter(self.batches)
        locate = self.dataset.locate
        try:
            for step in range(self.steps.start, self.steps.total):
                micro = [next(batches) for _ in range(self.micro.micro_per_step)]
                skipped = [locate(s) for b in micro for s in b["skipped"]]
                odd = [locate(s) for b in micro for s in b.get("odd", ())]
                yield step, [b for b in micro if b["video"] is not None], skipped, odd
        finally:
            close = getattr(batches, "close", None)  # DALI's batches: stop decoding ahead now
            if close is not None:
                close()


def check_step_samples(guard: EmptyStepGuard, step: int, micro_batches: list[dict], skipped: list[SkippedSample],
                       dist_info: DistInfo, device: torch.device) -> int:
    """The readable samples of one step summed over the processes, counted by ``guard``. Every
    process gets the same sum, so when the guard stops the run all of them raise together, with
    the same message (naming the last video skipped on the lowest rank that skipped one)."""
    samples = sum(len(b["label"]) for b in micro_batches)
    if dist_info.enabled:
        samples = int(all_reduce_sum(torch.tensor([float(samples)], device=device), dist_info).item())
    if guard.count(samples):
        raise guard.error(step, all_gather_lists(skipped[-1:], dist_info)[:1])
    return samples
