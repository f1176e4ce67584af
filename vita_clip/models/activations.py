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
        blocks = _row_blocks(x)
        if blocks is None:
            return x * torch.sigmoid(1.702 * x)
        out = torch.empty_like(x)
        for xb, ob in zip(blocks, out.view(-1, x.shape[-1]).split(GELU_BLOCK_ROWS)):
            torch.mul(xb, (xb * 1.702).sigmoid_(), out=ob)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        blocks = _row_blocks(x) if grad.is_contiguous() and grad.shape == x.shape else None
        if blocks is None:
            s = torch.sigmoid(1.702 * x)
            return grad * (s + 1.702 * x * s * (1 - s))
        out = torch.empty_like(grad)
        width = x.shape[-1]
        for xb, gb, ob in zip(blocks, grad.view(-1, width).split(GELU_BLOCK_ROWS), out.view(-1, width).split(GELU_BLOCK_ROWS)):
            # the ops above, in their order and dtype (so the same values), on one block's temporaries
            scaled = xb * 1.702
            s = torch.sigmoid(scaled)
            slope = scaled.mul_(s).mul_(1 - s).add_(s)
            torch.mul(gb, slope, out=ob)
        return out


def _row_blocks(x: torch.Tensor) -> list[torch.Tensor] | None:
    """``x`` as blocks of :data:`GELU_BLOCK_ROWS` rows, on a CPU (``None`` elsewhere): elementwise
    work block by block needs only small temporaries, which the heap reuses, where whole-size
    ones are fresh memory from the OS in every call (page faults: a B/16 bf16 training step on a
    CPU took 0.88x the time with blocks, side by side in one process). CUDA's caching
    allocator has no such cost, and there blocks would only add kernel launches."""
    if x.device.type != "cpu" or not x.is_contiguous() or x.dim() == 0:
        return None
    return list(x.view(-1, x.shape[-1]).split(GELU_BLOCK_ROWS))


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
    # no autograd: in place, block by block on a CPU (about 10 % of a B/16 bf16 forward there with
    # whole-size temporaries, see _row_blocks). Elementwise, so the same values.
    blocks = _row_blocks(hidden)
    if blocks is None:
        hidden = hidden.mul_(torch.sigmoid_(hidden * 1.702))
    else:
        for block in blocks:
            block.mul_(torch.sigmoid_(block * 1.702))
    return autocast_linear(hidden, mlp.c_proj.weight, mlp.c_proj.bias)
