"""Multi-process training with torchrun: NCCL on GPUs, gloo on CPUs.

Gradients are summed with one all-reduce per optimizer step over the trainable tensors
(instead of DistributedDataParallel), because the text features are computed once per step
outside the per-micro-batch forward passes (see :mod:`vita_clip.engine.step`).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun describes (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``); a
    plain ``python`` run is a group of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    return DistInfo(rank, world, local)


def all_reduce_sum_flat(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Sum each of ``tensors`` in place over processes, with one all-reduce of them all flattened."""
    if not info.enabled or not tensors:
        return
    flat = torch.cat([t.reshape(-1).float() for t in tensors])
    dist.all_reduce(flat)
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset:offset + n].view_as(t).to(t.dtype))
        offset += n


def broadcast_(tensors: list[torch.Tensor], info: DistInfo) -> None:
    """Give every process rank 0's values (the initial weights)."""
    if info.enabled:
        for t in tensors:
            dist.broadcast(t, src=0)


def all_reduce_sum(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum one tensor in place over processes; returns it."""
    if info.enabled:
        dist.all_reduce(values)
    return values


def all_gather_lists(items: list, info: DistInfo) -> list:
    """The concatenation, in rank order, of every process's ``items`` (picklable objects)."""
    if not info.enabled:
        return list(items)
    parts: list = [None] * info.world_size
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def cleanup(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
