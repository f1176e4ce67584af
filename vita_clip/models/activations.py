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


GELU_BLOCK_ROWS = 256  # rows of the MLP's hidden activation per in-place QuickGELU step (no autograd)


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
    # no autograd: in place, with one small temporary per block of rows. A whole tokens x 4 width
    # temporary is fresh memory from the OS each call (page faults: about 10 % of a B/16 bf16
    # forward on a CPU); a block's is reused from the heap. Elementwise, so the same values. CUDA's
    # caching allocator has no such cost, and there blocks would only add kernel launches.
    blocked = hidden.device.type == "cpu" and hidden.is_contiguous()
    rows = hidden.view(-1, hidden.shape[-1]) if blocked else None
    if rows is None:
        hidden = hidden.mul_(torch.sigmoid_(hidden * 1.702))
    else:
        for block in rows.split(GELU_BLOCK_ROWS):
            block.mul_(torch.sigmoid_(block * 1.702))
    return autocast_linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias)
