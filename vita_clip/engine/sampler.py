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

    def _permutation(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.size, generator=g)

    def step_indices(self, step: int) -> list[tuple[int, int]]:
        """This process's ``(index, epoch)`` pairs of optimizer step ``step``."""
        first = step * self.batch
        out, position = [], first + self.rank
        cache: dict[int, torch.Tensor] = {}
        while position < first + self.batch:
            epoch, offset = divmod(position, self.size)
            if epoch not in cache:
                cache[epoch] = self._permutation(epoch)
            out.append((int(cache[epoch][offset]), epoch))
            position += self.world
        return out

    def __iter__(self):
        perm_epoch, perm = -1, None
        for step in range(self.start, self.total):
            first = step * self.batch
            for position in range(first + self.rank, first + self.batch, self.world):
                epoch, offset = divmod(position, self.size)
                if epoch != perm_epoch:
                    perm_epoch, perm = epoch, self._permutation(epoch)
                yield int(perm[offset]), epoch

    def __len__(self) -> int:
        return (self.total - self.start) * (self.batch // self.world)
