"""One optimizer step with gradient accumulation, computing the text features once.

The original code recomputes the text features of all classes in every micro-batch (about a
third of the forward FLOPs of a K400 step). Here they are computed once per step: the
micro-batches use a detached leaf copy, whose gradient accumulates over the micro-batches,
and one backward pass takes it through the text side. The gradients are the same as with
per-micro-batch recomputation, because the loss is a sum over micro-batches and the text
features do not depend on the video.

The loss is normalised by the number of samples in the whole step over all processes, and
gradients are summed over processes: the result equals a single process with the same
global batch even when some samples were skipped (unreadable videos).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..precision import autocast
from .distributed import DistInfo, all_reduce_sum, all_reduce_sum_flat


@dataclass
class StepResult:
    loss: float
    correct: int
    samples: int
    grad_norm: float | None


def train_step(model: nn.Module, micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None = None,
               precision: str = "fp32", max_grad_norm: float | None = None,
               dist_info: DistInfo | None = None, params: list[nn.Parameter] | None = None,
               global_samples: int | None = None) -> StepResult:
    """Forward/backward over ``micro_batches`` of ``(video, labels)``, then one optimizer step.
    ``global_samples``: the step's samples summed over the processes, where the caller has it
    already (the trainer's empty-step check); else summed here."""
    dist_info = dist_info or DistInfo()
    params = params if params is not None else [p for p in model.parameters() if p.requires_grad]
    device = params[0].device
    optimizer.zero_grad(set_to_none=True)
    total = global_samples
    if total is None:
        counts = torch.tensor([float(sum(len(labels) for _, labels in micro_batches))], device=device)
        total = int(all_reduce_sum(counts, dist_info).item())
    scale = scaler.scale if scaler is not None else (lambda x: x)

    with autocast(device, precision):
        text = model.encode_text()
    text_leaf = text.detach().requires_grad_(text.requires_grad)
    # loss and hits stay on the device: no host sync per micro-batch
    stats = torch.zeros(2, device=device)
    for video, labels in micro_batches:
        if len(labels) == 0:
            continue
        with autocast(device, precision):
            logits = model(video, text_features=text_leaf)
        loss = F.cross_entropy(logits.float(), labels, reduction="sum") / max(total, 1)
        scale(loss).backward()
        stats += torch.stack([loss.detach(), (logits.argmax(-1) == labels).sum().float()])
    if text.requires_grad and text_leaf.grad is not None:
        text.backward(text_leaf.grad)

    if dist_info.enabled:
        for p in params:
            if p.grad is None:  # every process must contribute the same tensors
                p.grad = torch.zeros_like(p)
        all_reduce_sum_flat([p.grad for p in params], dist_info)
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = None
    if max_grad_norm is not None:
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_grad_norm))
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    loss_sum, correct = all_reduce_sum(stats, dist_info).tolist()
    if not math.isfinite(loss_sum):
        raise FloatingPointError(f"the training loss is {loss_sum}; lower optim.lr or use precision=fp32/bf16")
    return StepResult(loss=loss_sum, correct=int(correct), samples=total, grad_norm=grad_norm)
