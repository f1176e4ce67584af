"""The Triton launchers in 16-bit precision, as autocast feeds them, against float64.

Without a GPU the launchers run in Triton's interpreter on CPU tensors (``conftest.py`` sets
``TRITON_INTERPRET=1``); they are called directly, since the ops' CPU dispatch picks the CPU
implementations. With CUDA the same tests run on the GPU. Prompt attention gets 16-bit q/k/v and
prompts (what autocast's linears return); summary attention gets 16-bit ``c`` with float32
LayerNorm and projection parameters. Tolerance: twice torch's own error in the same dtype (the
CPU path the eager model runs, under the same autocast) plus a quarter of the dtype's epsilon.
Every launcher allocation starts as NaN, so an unwritten element fails the comparison.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm

from helpers import PROMPT_ATTENTION_INPUTS, mixed_precision_bound, needs_cuda, needs_triton, prompt_tensors, rel_err, summary_weights
from helpers import TRITON_DEVICES as DEVICES
from vita_clip.kernels import _launch
from vita_clip.kernels import prompt_attention as pa
from vita_clip.kernels import summary_attention as sa
from vita_clip.models.vita_vision import SummaryAttention

NAMES = PROMPT_ATTENTION_INPUTS
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch):
    def nan_empty(shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    monkeypatch.setattr(_launch, "empty", nan_empty)





# -- prompt attention --------------------------------------------------------------------------


def eager_attention_grads(t: dict, grad: torch.Tensor, dtype=None):
    """SDPA over the concatenated sequence (the eager model's attention), float64 or under CPU
    autocast, with the gradients of every input."""
    inputs = {n: x.detach().cpu().to(torch.float64 if dtype is None else torch.float32).requires_grad_(True)
              for n, x in t.items()}
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        keys = pa.concat_prompt_kv(inputs["k"], inputs["k_local"], inputs["k_global"], inputs["k_summary"])
        values = pa.concat_prompt_kv(inputs["v"], inputs["v_local"], inputs["v_global"], inputs["v_summary"])
        out = F.scaled_dot_product_attention(inputs["q"], keys, values)
    grads = torch.autograd.grad(out, list(inputs.values()), grad.cpu().to(out.dtype))
    return out, dict(zip(inputs, grads))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 3, 197, 1, 16, 8), (2, 8, 17, 2, 16, 3), (1, 16, 33, 1, 32, 5)],
                         ids=lambda s: "B{}T{}L{}H{}d{}M{}".format(*s))
def test_prompt_attention_kernels_16bit(device, dtype, shape):
    t = prompt_tensors(*shape, seed=sum(shape))
    grad = torch.randn(t["q"].shape, generator=torch.Generator().manual_seed(3))
    ref, ref_grads = eager_attention_grads(t, grad.double())
    theirs, their_grads = eager_attention_grads(t, grad, dtype)
    args = [t[n].to(device, dtype) for n in NAMES]
    out, lse = pa.prompt_attention_forward(*args)
    grads = dict(zip(NAMES, pa.prompt_attention_backward(grad.to(device, dtype), *args, out, lse)))
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert rel_err(out, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    for name in NAMES:
        assert grads[name].dtype == dtype, name
        assert rel_err(grads[name], ref_grads[name]) <= mixed_precision_bound(rel_err(their_grads[name], ref_grads[name]), dtype), name


# -- summary attention -------------------------------------------------------------------------




def eager_summary_grads(c, weights, heads, grad, dtype=None):
    """The eager model's summary branch (open_clip LayerNorm + vision.SummaryAttention), float64
    or under CPU autocast, with the gradients of c and every parameter."""
    width = c.shape[-1]
    inputs = [c.detach().cpu().double() if dtype is None else c.detach().cpu()]
    inputs += [w.detach().cpu().double() if dtype is None else w.detach().cpu() for w in weights]
    inputs = [x.requires_grad_(True) for x in inputs]
    ln, attn = LayerNorm(width).to(inputs[1].dtype), SummaryAttention(width, heads).to(inputs[1].dtype)
    names = [f"{proj}.{p}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj") for p in ("weight", "bias")]
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        y = torch.func.functional_call(ln, dict(zip(("weight", "bias"), inputs[1:3])), (inputs[0],))
        out = inputs[0] + torch.func.functional_call(attn, dict(zip(names, inputs[3:])), (y,))
    return out, torch.autograd.grad(out, inputs, grad.cpu().to(out.dtype))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("videos, frames, width, heads", [(2, 3, 48, 3), (1, 8, 64, 4), (1, 16, 32, 2)])
def test_summary_attention_kernels_16bit_input_float32_parameters(device, dtype, videos, frames, width, heads):
    c = torch.randn(videos, frames, width, generator=torch.Generator().manual_seed(frames)).to(dtype)
    weights = summary_weights(width, seed=width + frames)
    grad = torch.randn(c.shape, generator=torch.Generator().manual_seed(7))
    ref, ref_grads = eager_summary_grads(c, weights, heads, grad.double())
    theirs, their_grads = eager_summary_grads(c, weights, heads, grad, dtype)
    inputs = [c.to(device)] + [w.to(device) for w in weights]
    out = sa.summary_attention_forward(*inputs, heads)
    grads = sa.summary_attention_backward(grad.to(device, dtype), *inputs, heads)
    assert out.dtype == dtype and rel_err(out, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    floor = 1e-3 * max(g.norm().item() for g in ref_grads)  # the k bias has an exactly-zero gradient
    for name, g, tg, rg, x in zip(("c",) + sa.WEIGHTS, grads, their_grads, ref_grads, inputs):
        assert g.dtype == x.dtype, name  # dc in c's dtype, parameter gradients in float32
        assert rel_err(g, rg, floor) <= mixed_precision_bound(rel_err(tg, rg, floor), dtype), name


@needs_triton
@needs_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_ops_dispatch_to_the_kernels_under_cuda_autocast(dtype):
    """Under CUDA autocast the ops reach the Triton kernels with mixed dtypes and give gradients
    in each parameter's dtype (on CPU the same is covered by test_mixed_precision.py)."""
    c = torch.randn(2, 8, 64, device="cuda", requires_grad=True)
    weights = [w.cuda().requires_grad_(True) for w in summary_weights(64, seed=1)]
    with torch.autocast("cuda", dtype=dtype):
        s = sa.summary_attention(F.linear(c, torch.eye(64, device="cuda")), *weights, heads=4)
        q = F.linear(torch.randn(16, 2, 197, 32, device="cuda"), torch.eye(32, device="cuda"))
        out = pa.prompt_attention(q, q, q, None, None, None, None, s.view(16, 2, 32), s.view(16, 2, 32))
    assert s.dtype == dtype and out.dtype == dtype
    (out.float().sum() + s.float().sum()).backward()
    assert c.grad.dtype == torch.float32 and all(w.grad.dtype == torch.float32 for w in weights)
