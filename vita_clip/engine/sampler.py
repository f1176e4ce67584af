"""The order in which training samples are drawn: a pure function of (seed, step).

Like the original step-based loop, the sequence is a concatenation of seeded permutations of
the dataset ("epochs"); optimizer step ``s`` takes the next ``batch_size`` entries, and
process ``r`` of ``w`` takes every ``w``-th of them. A resumed run therefore continues with
exactly the samples the interrupted run would have seen, whatever the number of workers.
"""
from __future__ import annotations

import torch


class StepSampler(torch.utils.data.Sampler):
    """Yields ``(index, epoch)`` pairs for optimizer steps ``start_step .. total_steps-1``."""

    def __init__(self, dataset_size: int, batch_size: int, total_steps: int, seed: int,
                 rank: int = 0, world_size: int = 1, start_step: int = 0):
        if dataset_size < 1:
            raise ValueError("the training set is empty")
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} is not divisible by the {world_size} processes")
        self.size, self.batch, self.total = dataset_size, batch_size, total_steps
        self.seed, self.rank, self.world, self.start = seed, rank, world_size, start_step
        self._epoch, self._perm = -1, None

    def _key(self, position: int) -> tuple[int, int]:
        """The ``(index, epoch)`` at ``position`` of the endless sequence of permutations."""
        epoch, offset = divmod(position, self.size)
        if epoch != self._epoch:  # one permutation is kept: positions are visited in order
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.size, generator=g)
        return int(self._perm[offset]), epoch

    def _positions(self, step: int) -> range:
        first = step * self.batch
        return range(first + self.rank, first + self.batch, self.world)

    def step_indices(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(index, epoch)`` pairs of optimizer step ``step``."""
        return [self._key(p) for p in self._positions(step)]

    def __iter__(self):
        for step in range(self.start, self.total):
            yield from self.step_indices(step)

    def __len__(self) -> int:
        return (self.total - self.start) * (self.batch // self.world)
