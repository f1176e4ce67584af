"""The fused ops and the fused model under bfloat16 / float16 autocast on CPU, against float64.

Tolerances are relative to torch's own error in the same dtype: the eager path (the modules and
attention the eager model runs, under the same autocast) is measured against the same float64
reference on the same inputs, and ours must stay within ``2 x torch's error + eps``, eps a
quarter of the dtype's epsilon. Fresh random inputs, odd sizes (197 tokens; 3, 8, 16 frames)
at small widths.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm

from helpers import PROMPT_ATTENTION_INPUTS, mixed_precision_bound, prompt_tensors, rel_err, summary_weights
from vita_clip import create_model, precision
from vita_clip.kernels import prompt_attention as pa
from vita_clip.kernels import summary_attention as sa
from vita_clip.models.vita_vision import SummaryAttention

NAMES = PROMPT_ATTENTION_INPUTS
DTYPES = [pytest.param(torch.bfloat16, id="bf16"), pytest.param(torch.float16, id="fp16")]





def leaves(tensors: dict, dtype=None) -> dict:
    return {n: t.detach().to(dtype or t.dtype).requires_grad_(True) for n, t in tensors.items()}


# -- prompt attention --------------------------------------------------------------------------


def eager_attention(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary):
    """What the eager model runs: SDPA over the concatenated sequence."""
    keys = pa.concat_prompt_kv(k, k_local, k_global, k_summary)
    values = pa.concat_prompt_kv(v, v_local, v_global, v_summary)
    return F.scaled_dot_product_attention(q, keys, values)


def reference_attention(**inputs):
    return pa.prompt_attention_reference(**inputs)[0]


def output_and_grads(fn, inputs: dict, grad: torch.Tensor, dtype=None):
    if dtype is None:
        out = fn(**inputs)
    else:
        with torch.autocast("cpu", dtype=dtype):
            out = fn(**inputs)
    return out, dict(zip(inputs, torch.autograd.grad(out, list(inputs.values()), grad.to(out.dtype))))


PROMPT_SHAPES = [  # (videos, frames, tokens, heads, head_dim, global prompts)
    (1, 3, 197, 2, 16, 8),
    (2, 8, 17, 2, 32, 3),
    (1, 16, 50, 1, 16, 5),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", PROMPT_SHAPES, ids=lambda s: "B{}T{}L{}H{}d{}M{}".format(*s))
def test_prompt_attention_under_autocast(dtype, shape):
    """float32 inputs under autocast: the op runs in the autocast dtype and returns float32
    gradients, within twice the error of the eager attention under the same autocast."""
    t = prompt_tensors(*shape, seed=sum(shape))
    grad = torch.randn(t["q"].shape, generator=torch.Generator().manual_seed(1))
    ref, ref_grads = output_and_grads(reference_attention, leaves(t, torch.float64), grad.double())
    ours, our_grads = output_and_grads(pa.prompt_attention, leaves(t), grad, dtype)
    theirs, their_grads = output_and_grads(eager_attention, leaves(t), grad, dtype)
    assert ours.dtype == dtype and theirs.dtype == dtype
    assert rel_err(ours, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    for name in NAMES:
        assert our_grads[name].dtype == torch.float32, name
        assert rel_err(our_grads[name], ref_grads[name]) <= mixed_precision_bound(rel_err(their_grads[name], ref_grads[name]), dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
def test_prompt_attention_16bit_inputs(dtype):
    """16-bit inputs outside autocast (a model cast to 16 bits): 16-bit output and gradients."""
    t = prompt_tensors(2, 3, 197, 2, 16, 8, seed=3)
    grad = torch.randn(t["q"].shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    ref, ref_grads = output_and_grads(reference_attention, leaves(t, torch.float64), grad.double())
    ours, our_grads = output_and_grads(pa.prompt_attention, leaves(t, dtype), grad)
    theirs, their_grads = output_and_grads(eager_attention, leaves(t, dtype), grad)
    assert ours.dtype == dtype and rel_err(ours, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    for name in NAMES:
        assert our_grads[name].dtype == dtype, name
        assert rel_err(our_grads[name], ref_grads[name]) <= mixed_precision_bound(rel_err(their_grads[name], ref_grads[name]), dtype), name


def test_prompt_attention_mixed_dtypes_outside_autocast_are_refused():
    t = prompt_tensors(1, 3, 5, 1, 16, 2, seed=0)
    with pytest.raises(ValueError, match="k_local is torch.float32 on cpu, q is torch.bfloat16"):
        pa.prompt_attention(**{**t, "q": t["q"].bfloat16(), "k": t["k"].bfloat16(), "v": t["v"].bfloat16()})


# -- summary attention -------------------------------------------------------------------------




def eager_summary(c, weights, heads):
    """The eager model's summary branch: open_clip's LayerNorm and vision.SummaryAttention."""
    width = c.shape[-1]
    ln, attn = LayerNorm(width), SummaryAttention(width, heads)
    ln_params = dict(zip(("weight", "bias"), weights[:2]))
    attn_params = dict(zip((f"{proj}.{p}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj")
                            for p in ("weight", "bias")), weights[2:]))
    y = torch.func.functional_call(ln, ln_params, (c,))
    return c + torch.func.functional_call(attn, attn_params, (y,))


def summary_grads(out, inputs, grad):
    return torch.autograd.grad(out, inputs, grad.to(out.dtype))


def check_summary_close(ours, our_grads, theirs, their_grads, ref, ref_grads, inputs, dtype):
    assert rel_err(ours, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    # the k bias has an exactly-zero gradient: errors there are relative to the largest gradient
    floor = 1e-3 * max(g.norm().item() for g in ref_grads)
    for name, g, tg, rg, x in zip(("c",) + sa.WEIGHTS, our_grads, their_grads, ref_grads, inputs):
        assert g.dtype == x.dtype, name  # every gradient in its input's dtype
        assert rel_err(g, rg, floor) <= mixed_precision_bound(rel_err(tg, rg, floor), dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("videos, frames, width, heads", [(2, 3, 48, 3), (1, 8, 64, 4), (2, 16, 32, 2)])
def test_summary_attention_16bit_input_float32_parameters(dtype, videos, frames, width, heads):
    """What autocast hands the op: c in 16 bits (the output of an autocast linear), the LayerNorm
    and projection parameters in float32 -- under autocast and outside it."""
    c = torch.randn(videos, frames, width, generator=torch.Generator().manual_seed(frames)).to(dtype)
    weights = summary_weights(width, seed=width)
    grad = torch.randn(c.shape, generator=torch.Generator().manual_seed(5))
    ref_inputs = [c.double().requires_grad_(True)] + [w.double().requires_grad_(True) for w in weights]
    ref = sa.summary_attention_reference(*ref_inputs, heads=heads)
    ref_grads = summary_grads(ref, ref_inputs, grad.double())
    their_inputs = [c.clone().requires_grad_(True)] + [w.clone().requires_grad_(True) for w in weights]
    with torch.autocast("cpu", dtype=dtype):
        theirs = eager_summary(their_inputs[0], their_inputs[1:], heads)
    their_grads = summary_grads(theirs, their_inputs, grad)
    for autocast in (True, False):
        inputs = [c.clone().requires_grad_(True)] + [w.clone().requires_grad_(True) for w in weights]
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            ours = sa.summary_attention(*inputs, heads=heads)
        assert ours.dtype == dtype and theirs.dtype == dtype
        check_summary_close(ours, summary_grads(ours, inputs, grad), theirs, their_grads, ref, ref_grads, inputs,
                            dtype)


# -- the fused model ---------------------------------------------------------------------------


def model_logits_and_grads(model, video, labels, dtype=None):
    model.zero_grad()
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        logits = model(video)
    F.cross_entropy(logits.float(), labels).backward()
    return logits, {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("frames", [3, 8])
def test_fused_model_under_autocast(tiny_classes, dtype, frames):
    """Forward and every trainable gradient of the fused model under autocast: within twice the
    eager model's error under the same autocast, both against the eager model in float64."""
    torch.manual_seed(0)
    eager = create_model("vita-clip-tiny", tiny_classes, num_frames=frames).train()
    fused = create_model("vita-clip-tiny", tiny_classes, num_frames=frames, fused=True).train()
    fused.load_state_dict(eager.state_dict())
    video = torch.randn(2, frames, 3, 32, 32, generator=torch.Generator().manual_seed(frames))
    labels = torch.tensor([1, 3])
    theirs, their_grads = model_logits_and_grads(eager, video, labels, dtype)
    ours, our_grads = model_logits_and_grads(fused, video, labels, dtype)
    ref, ref_grads = model_logits_and_grads(eager.double(), video.double(), labels)
    assert rel_err(ours, ref) <= mixed_precision_bound(rel_err(theirs, ref), dtype)
    assert our_grads.keys() == ref_grads.keys()
    floor = 1e-3 * max(g.norm().item() for g in ref_grads.values())
    # torch's error on one small parameter is itself a noisy sample (the summary k bias has an
    # exactly-zero true gradient: pure cancellation noise): each parameter is held to twice the
    # larger of torch's error on it and torch's error over all gradients together
    pooled = rel_err(torch.cat([g.flatten() for g in their_grads.values()]),
                 torch.cat([g.flatten() for g in ref_grads.values()]))
    assert rel_err(torch.cat([g.flatten() for g in our_grads.values()]),
               torch.cat([g.flatten() for g in ref_grads.values()])) <= mixed_precision_bound(pooled, dtype)
    for name, g in our_grads.items():
        assert g.dtype == torch.float32, name
        torch_err = max(rel_err(their_grads[name], ref_grads[name], floor), pooled)
        assert rel_err(g, ref_grads[name], floor) <= mixed_precision_bound(torch_err, dtype), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", ["vita-clip-tiny", "vifi-clip-tiny-prompting"])
def test_weights_cast_once_give_autocast_bit_for_bit(tiny_classes, name, dtype):
    """The fused layers' frozen weights cast once (precision.autocast_linear) against autocast
    casting them in every call: the same logits and gradients, bit for bit, after an inference
    pass under inference_mode has made the copies."""
    torch.manual_seed(0)
    model = create_model(name, tiny_classes, num_frames=3, fused=True)
    video = torch.randn(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    labels = torch.tensor([0, 2])
    previous = precision.set_cast_cache(True)
    try:
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            cached = model.eval()(video)
        copies = [n for n, p in model.named_parameters() if precision._CAST_ATTR in p.__dict__]
        assert any("in_proj_weight" in n for n in copies) and any("mlp.c_fc" in n for n in copies)
        if name.startswith("vita"):  # the summary attention's projections too
            assert {p for p in ("q_proj", "k_proj", "v_proj", "out_proj") if any(f"summary_attn.{p}" in n for n in copies)} \
                == {"q_proj", "k_proj", "v_proj", "out_proj"}
        logits, grads = model_logits_and_grads(model.train(), video, labels, dtype)
        precision.set_cast_cache(False)
        with torch.inference_mode(), torch.autocast("cpu", dtype=dtype):
            assert torch.equal(model.eval()(video), cached)
        model.zero_grad()
        their_logits, their_grads = model_logits_and_grads(model.train(), video, labels, dtype)
    finally:
        precision.set_cast_cache(previous)
    assert torch.equal(logits, their_logits)
    assert grads.keys() == their_grads.keys()
    for n, g in grads.items():
        assert torch.equal(g, their_grads[n]), n
