"""Prompt attention: the frozen ViT attention of Vita-CLIP without building the prompt sequence.

The released code concatenates ``[CLS, local(T), global(M), patches, summary]`` for every
frame, runs LayerNorm, q/k/v projections and attention over all of them, keeps the outputs
of CLS and patches only and strips the rest. Here only the surviving tokens have queries,
and each frame attends to keys/values coming from four sources:

* its own tokens ``k, v``                      (F, H, L, d)  F = B*T frames, frame-major
* the local prompts of its video ``k_local``   (B, H, T_l, d) shared by the video's frames
* the layer's global prompts ``k_global``       (H, M, d)     shared by every frame
* its own summary token ``k_summary``           (F, H, d)

``out = softmax(q [k; k_local[b]; k_global; k_summary[f]]^T / sqrt(d)) [v; ...]`` with
shape (F, H, L, d), plus the log-sum-exp of the scores (F, H, L, float32) for the backward.
Any of the three prompt sources may be ``None``.

Implementations: the CPU composite below (per-frame K/V concatenation + torch's flash
attention for CPU, whose backward gives the gradients that are then reduced over the frames
sharing a source) and, on CUDA, the Triton kernel. ``prompt_attention_reference`` is the
float64-capable eager reference every implementation is tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# -- eager reference ---------------------------------------------------------------------------


def concat_prompt_kv(k: Tensor, k_local: Tensor | None, k_global: Tensor | None, k_summary: Tensor | None) -> Tensor:
    """Per-frame keys (or values) of all sources, ``(F, H, L + T_l + M + 1, d)``."""
    frames, heads, _, dim = k.shape
    parts = [k]
    if k_local is not None:
        per_video = frames // k_local.shape[0]
        parts.append(k_local.repeat_interleave(per_video, dim=0))
    if k_global is not None:
        parts.append(k_global.unsqueeze(0).expand(frames, heads, -1, dim))
    if k_summary is not None:
        parts.append(k_summary.unsqueeze(2))
    return torch.cat(parts, dim=2)


def prompt_attention_reference(q, k, v, k_local=None, v_local=None, k_global=None, v_global=None,
                               k_summary=None, v_summary=None) -> tuple[Tensor, Tensor]:
    """Plain softmax attention over the concatenated sources: ``(out, lse)``."""
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    scores = (q @ keys.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return torch.softmax(scores, dim=-1) @ values, torch.logsumexp(scores.to(lse_dtype(q.dtype)), dim=-1)


def lse_dtype(dtype: torch.dtype) -> torch.dtype:
    """The log-sum-exp is kept in float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


# -- input checks ------------------------------------------------------------------------------


def check_inputs(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary) -> None:
    if q.dim() != 4:
        raise ValueError(f"prompt_attention: q must be (frames, heads, tokens, head_dim), got {tuple(q.shape)}")
    frames, heads, _, dim = q.shape
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"prompt_attention: k {tuple(k.shape)} and v {tuple(v.shape)} must match q {tuple(q.shape)}")
    pairs = {"local": (k_local, v_local), "global": (k_global, v_global), "summary": (k_summary, v_summary)}
    for name, (key, value) in pairs.items():
        if (key is None) != (value is None):
            raise ValueError(f"prompt_attention: k_{name} and v_{name} must both be given or both be None")
        if key is None:
            continue
        if key.shape != value.shape:
            raise ValueError(f"prompt_attention: k_{name} {tuple(key.shape)} and v_{name} {tuple(value.shape)} differ")
        if key.dtype != q.dtype or key.device != q.device:
            raise ValueError(f"prompt_attention: k_{name} is {key.dtype} on {key.device}, q is {q.dtype} on {q.device}")
    if k_local is not None and (k_local.dim() != 4 or k_local.shape[1] != heads or k_local.shape[3] != dim
                                or frames % k_local.shape[0]):
        raise ValueError(f"prompt_attention: k_local must be (videos, {heads}, prompts, {dim}) with {frames} frames "
                         f"a multiple of videos, got {tuple(k_local.shape)}")
    if k_global is not None and (k_global.dim() != 3 or k_global.shape[0] != heads or k_global.shape[2] != dim):
        raise ValueError(f"prompt_attention: k_global must be ({heads}, prompts, {dim}), got {tuple(k_global.shape)}")
    if k_summary is not None and tuple(k_summary.shape) != (frames, heads, dim):
        raise ValueError(f"prompt_attention: k_summary must be ({frames}, {heads}, {dim}), got {tuple(k_summary.shape)}")


# -- composite implementation (CPU, and any device without a kernel) ---------------------------


def _attention_with_lse(q: Tensor, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, keys, values, 0.0, False, scale=1.0 / math.sqrt(q.shape[-1]))
    acc = lse_dtype(q.dtype)
    scores = (q.to(acc) @ keys.to(acc).transpose(-1, -2)) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.exp(scores - lse.unsqueeze(-1)) @ values.to(acc)).to(q.dtype), lse


def split_source_grads(grad: Tensor, tokens: int, k_local, k_global, k_summary):
    """Split per-frame gradients of the concatenated keys (or values) back into the sources,
    summing over the frames that share a local or global source."""
    frames, heads, _, dim = grad.shape
    start = tokens
    out = [grad[:, :, :tokens]]
    if k_local is not None:
        videos, _, n, _ = k_local.shape
        part = grad[:, :, start:start + n].reshape(videos, frames // videos, heads, n, dim).sum(1)
        out.append(part.to(k_local.dtype))
        start += n
    else:
        out.append(None)
    if k_global is not None:
        n = k_global.shape[1]
        out.append(grad[:, :, start:start + n].sum(0).to(k_global.dtype))
        start += n
    else:
        out.append(None)
    out.append(grad[:, :, start].to(k_summary.dtype) if k_summary is not None else None)
    return out


def _composite_forward(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    out, lse = _attention_with_lse(q, keys, values)
    return out, lse.to(lse_dtype(q.dtype))


def _composite_backward(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    keys = concat_prompt_kv(k, k_local, k_global, k_summary)
    values = concat_prompt_kv(v, v_local, v_global, v_summary)
    if q.device.type == "cpu":
        dq, dkeys, dvalues = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad_out, q, keys, values, out, lse, 0.0, False, scale=1.0 / math.sqrt(q.shape[-1]))
    else:
        scale, acc = 1.0 / math.sqrt(q.shape[-1]), lse.dtype
        p = torch.exp((q.to(acc) @ keys.to(acc).transpose(-1, -2)) * scale - lse.unsqueeze(-1))
        g = grad_out.to(acc)
        dvalues = p.transpose(-1, -2) @ g
        dp = g @ values.to(acc).transpose(-1, -2)
        ds = p * (dp - (g * out.to(acc)).sum(-1, keepdim=True))
        dq, dkeys = (ds @ keys.to(acc)) * scale, (ds.transpose(-1, -2) @ q.to(acc)) * scale
        dq, dkeys, dvalues = dq.to(q.dtype), dkeys.to(q.dtype), dvalues.to(q.dtype)
    tokens = k.shape[2]
    dk, dkl, dkg, dks = split_source_grads(dkeys, tokens, k_local, k_global, k_summary)
    dv, dvl, dvg, dvs = split_source_grads(dvalues, tokens, v_local, v_global, v_summary)
    return dq, dk, dv, dkl, dvl, dkg, dvg, dks, dvs


# -- custom ops --------------------------------------------------------------------------------


@torch.library.custom_op("vita_clip::prompt_attention", mutates_args=())
def prompt_attention_op(q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None, v_local: Tensor | None,
                        k_global: Tensor | None, v_global: Tensor | None, k_summary: Tensor | None,
                        v_summary: Tensor | None) -> tuple[Tensor, Tensor]:
    check_inputs(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    out, lse = _composite_forward(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    return out.contiguous(), lse.contiguous()


@prompt_attention_op.register_fake
def _(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=lse_dtype(q.dtype))


@torch.library.custom_op("vita_clip::prompt_attention_backward", mutates_args=())
def prompt_attention_backward_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None,
                                 v_local: Tensor | None, k_global: Tensor | None, v_global: Tensor | None,
                                 k_summary: Tensor | None, v_summary: Tensor | None, out: Tensor,
                                 lse: Tensor) -> list[Tensor]:
    grads = _composite_backward(grad_out.contiguous(), q, k, v, k_local, v_local, k_global, v_global,
                                k_summary, v_summary, out, lse)
    # custom ops cannot return None: absent sources get empty tensors, dropped again in backward
    return [g.contiguous() if g is not None else q.new_empty(0) for g in grads]


@prompt_attention_backward_op.register_fake
def _(grad_out, q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse):
    sources = (q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
    return [torch.empty_like(t, memory_format=torch.contiguous_format) if t is not None else q.new_empty(0)
            for t in sources]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs, *output)
    ctx.present = [t is not None for t in inputs]


def _backward(ctx, grad_out, grad_lse):
    q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary, out, lse = ctx.saved_tensors
    grads = prompt_attention_backward_op(grad_out, q, k, v, k_local, v_local, k_global, v_global,
                                         k_summary, v_summary, out, lse)
    return tuple(g if present else None for g, present in zip(grads, ctx.present))


prompt_attention_op.register_autograd(_backward, setup_context=_setup_context)


def prompt_attention(q: Tensor, k: Tensor, v: Tensor, k_local: Tensor | None = None, v_local: Tensor | None = None,
                     k_global: Tensor | None = None, v_global: Tensor | None = None,
                     k_summary: Tensor | None = None, v_summary: Tensor | None = None) -> Tensor:
    """Attention of each frame's tokens over its own and the prompt keys/values: ``(F, H, L, d)``.

    See the module docstring for the shapes. Differentiable with respect to every tensor.
    """
    return prompt_attention_op(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)[0]
