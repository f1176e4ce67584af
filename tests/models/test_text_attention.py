"""The text blocks' self-attention (:class:`~vita_clip.models.text.BatchFirstSelfAttention`):
nn.MultiheadAttention's values and gradients, without its batched GEMM over copied weights."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import mixed_precision_bound, rel_err
from vita_clip import create_model
from vita_clip.models.text import BatchFirstSelfAttention


def attention_and_input(width=32, heads=4, n=5, length=11, seed=0):
    torch.manual_seed(seed)
    attn = nn.MultiheadAttention(width, heads, batch_first=True)
    nn.init.normal_(attn.in_proj_bias, std=0.1)
    mask = torch.full((length, length), float("-inf")).triu(1)  # causal, additive: the CLIP text mask
    return attn, torch.randn(n, length, width), mask


def values_and_grads(attn, x, mask, dtype=None):
    x = x.detach().clone().requires_grad_()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        out = attn(x, x, x, need_weights=False, attn_mask=mask.to(x.dtype))[0]
    grads = torch.autograd.grad(out, [x, *attn.parameters()], torch.ones_like(out) / out.numel() ** 0.5)
    return out.detach(), grads


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
def test_values_and_gradients_are_multihead_attention_s(dtype):
    attn, x, mask = attention_and_input()
    ref_out, ref_grads = values_and_grads(attn.double(), x.double(), mask.double())
    attn.float()
    their_out, their_grads = values_and_grads(attn, x, mask, dtype)
    attn.__class__ = BatchFirstSelfAttention
    our_out, our_grads = values_and_grads(attn, x, mask, dtype)
    eps_dtype = dtype or torch.float32
    assert rel_err(our_out, ref_out) <= mixed_precision_bound(rel_err(their_out, ref_out), eps_dtype)
    for ours, theirs, ref in zip(our_grads, their_grads, ref_grads):
        assert rel_err(ours, ref) <= mixed_precision_bound(rel_err(theirs, ref), eps_dtype)


def test_other_calls_are_the_parent_s():
    attn, x, mask = attention_and_input()
    expected_out, expected_weights = attn(x, x, x, attn_mask=mask)
    attn.__class__ = BatchFirstSelfAttention
    out, weights = attn(x, x, x, attn_mask=mask)  # attention weights asked for: the parent's path
    assert torch.equal(out, expected_out) and torch.equal(weights, expected_weights)
    memory = torch.randn(5, 7, 32)
    torch.testing.assert_close(attn(x, memory, memory)[0],
                               nn.MultiheadAttention.forward(attn, x, memory, memory)[0])


def test_the_text_tower_trains_without_batched_gemms_over_copied_weights():
    """A training forward and backward of the prompt learner's text tower runs no ``aten::bmm``
    (nn.MultiheadAttention's strided input projection ran one per block, on L copies of the weight)."""
    model = create_model("vita-clip-tiny", ["yoga", "playing guitar", "surfing water"]).train()
    blocks = model.text.transformer.resblocks
    assert all(type(b.attn) is BatchFirstSelfAttention for b in blocks)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        model.class_text_features().sum().backward()
    names = {e.key for e in prof.key_averages()}
    assert "aten::mm" in names or "aten::addmm" in names
    assert "aten::bmm" not in names
