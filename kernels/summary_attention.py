"""Summary attention: Vita-CLIP's cross-frame MHSA as one op.

For the projected CLS tokens ``c`` of every video, ``(B, T, D)``::

    s = c + out_proj(MHSA(LN(c)))     # attention over the T frames of each video, all heads

The summary token of frame t is ``s[b, t]``. LayerNorm, the q/k/v projections, the
attention and the output projection with the residual form one op, so a GPU runs the whole
branch of one layer for the whole batch in one launch (the Triton kernel) instead of a
chain of small kernels. The CPU composite runs the same math with torch ops; its backward
recomputes the forward under autograd (the op is tiny next to the frozen ViT).
``summary_attention_reference`` is the eager reference the implementations are tested against.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

WEIGHTS = ("ln_weight", "ln_bias", "q_weight", "q_bias", "k_weight", "k_bias", "v_weight", "v_bias",
           "out_weight", "out_bias")


def summary_attention_reference(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                                k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                                out_weight: Tensor, out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    b, t, d = c.shape
    y = F.layer_norm(c, (d,), ln_weight, ln_bias, eps)

    def split(x):
        return x.view(b, t, heads, d // heads).transpose(1, 2)

    q, k, v = (split(F.linear(y, w, bias)) for w, bias in ((q_weight, q_bias), (k_weight, k_bias), (v_weight, v_bias)))
    scores = (q @ k.transpose(-1, -2)) / (d // heads) ** 0.5
    mixed = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
    return c + F.linear(mixed, out_weight, out_bias)


def check_inputs(c: Tensor, weights: tuple[Tensor, ...], heads: int) -> None:
    if c.dim() != 3:
        raise ValueError(f"summary_attention: c must be (videos, frames, width), got {tuple(c.shape)}")
    d = c.shape[-1]
    if heads < 1 or d % heads:
        raise ValueError(f"summary_attention: width {d} is not divisible by heads={heads}")
    for name, w in zip(WEIGHTS, weights):
        expected = (d, d) if name.endswith("_weight") and not name.startswith("ln") else (d,)
        if tuple(w.shape) != expected:
            raise ValueError(f"summary_attention: {name} must be {expected}, got {tuple(w.shape)}")
        if w.device != c.device:
            raise ValueError(f"summary_attention: {name} is on {w.device}, c on {c.device}")


def _composite(c, weights, heads, eps):
    ln_w, ln_b, q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b = weights
    b, t, d = c.shape
    y = F.layer_norm(c, (d,), ln_w, ln_b, eps)
    qkv = F.linear(y, torch.cat([q_w, k_w, v_w]), torch.cat([q_b, k_b, v_b]))
    q, k, v = qkv.view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4).unbind(0)
    mixed = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, d)
    return c + F.linear(mixed, o_w, o_b)


@torch.library.custom_op("vita_clip::summary_attention", mutates_args=())
def summary_attention_op(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                         k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                         out_bias: Tensor, heads: int, eps: float) -> Tensor:
    weights = (ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    check_inputs(c, weights, heads)
    return _composite(c, weights, heads, eps).contiguous()


@summary_attention_op.register_fake
def _(c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias, heads, eps):
    return torch.empty_like(c, memory_format=torch.contiguous_format)


@torch.library.custom_op("vita_clip::summary_attention_backward", mutates_args=())
def summary_attention_backward_op(grad: Tensor, c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor,
                                  q_bias: Tensor, k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor,
                                  out_weight: Tensor, out_bias: Tensor, heads: int, eps: float) -> list[Tensor]:
    inputs = (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)
    # An op body runs below the autograd dispatch key; torch.func.vjp differentiates there.
    _, vjp = torch.func.vjp(lambda *xs: _composite(xs[0], xs[1:], heads, eps), *inputs)
    return [g.clone(memory_format=torch.contiguous_format) for g in vjp(grad)]  # never alias `grad`


@summary_attention_backward_op.register_fake
def _(grad, c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias,
      heads, eps):
    return [torch.empty_like(t, memory_format=torch.contiguous_format) for t in
            (c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias, out_weight, out_bias)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:11])
    ctx.heads, ctx.eps = inputs[11], inputs[12]


def _backward(ctx, grad):
    grads = summary_attention_backward_op(grad.contiguous(), *ctx.saved_tensors, ctx.heads, ctx.eps)
    return (*grads, None, None)


summary_attention_op.register_autograd(_backward, setup_context=_setup_context)


def summary_attention(c: Tensor, ln_weight: Tensor, ln_bias: Tensor, q_weight: Tensor, q_bias: Tensor,
                      k_weight: Tensor, k_bias: Tensor, v_weight: Tensor, v_bias: Tensor, out_weight: Tensor,
                      out_bias: Tensor, heads: int, eps: float = 1e-5) -> Tensor:
    """``c + out_proj(MHSA(LN(c)))`` over the frames of each video, ``(B, T, D)``; differentiable."""
    return summary_attention_op(c, ln_weight, ln_bias, q_weight, q_bias, k_weight, k_bias, v_weight, v_bias,
                                out_weight, out_bias, heads, eps)
