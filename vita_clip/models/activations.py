"""The frozen MLP of a CLIP block with a QuickGELU that keeps half the memory for the backward.

``x * sigmoid(1.702 x)`` as three autograd ops saves both ``x`` and the sigmoid: two tensors
of the widest activation (tokens x 4 width), about half of all the bytes a ViT-B/16 training
step saves. :class:`LeanQuickGELU` saves ``x`` only and recomputes the sigmoid in the
backward (one elementwise op). The fused Vita-CLIP layer uses it; the eager layer keeps the
released code's ops.
"""
from __future__ import annotations

import torch
from open_clip.transformer import QuickGELU
from torch import nn

from ..precision import autocast_linear


class LeanQuickGELU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x * torch.sigmoid(1.702 * x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(1.702 * x)
        return grad * (s + 1.702 * x * s * (1 - s))


def frozen_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``mlp(x)`` for an open_clip MLP (``c_fc``, ``gelu``, ``c_proj``) with a QuickGELU: through
    :class:`LeanQuickGELU` when gradients are recorded, in place otherwise; the weights through
    :func:`~vita_clip.precision.autocast_linear` (cast once under autocast)."""
    plain = [name for name, _ in mlp.named_children()] == ["c_fc", "gelu", "c_proj"]
    if not (plain and isinstance(mlp.gelu, QuickGELU)):
        return mlp(x)
    hidden = autocast_linear(x, mlp.c_fc.weight, mlp.c_fc.bias)
    if torch.is_grad_enabled() and hidden.requires_grad:
        return autocast_linear(LeanQuickGELU.apply(hidden), mlp.c_proj.weight, mlp.c_proj.bias)
    # no autograd: one temporary instead of three (each a fresh tokens x 4 width allocation)
    gate = torch.sigmoid_(hidden * 1.702)
    return autocast_linear(hidden.mul_(gate), mlp.c_proj.weight, mlp.c_proj.bias)
