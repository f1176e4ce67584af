"""The fused ops' CPU implementations against float64 eager references (fresh random inputs, odd sizes)."""
from __future__ import annotations

import pytest
import torch

from helpers import PROMPT_ATTENTION_INPUTS, prompt_inputs, prompt_tensors, rel_err
from vita_clip.kernels import _cpu_extension
from vita_clip.kernels import prompt_attention as pa
from vita_clip.kernels.prompt_attention import prompt_attention, prompt_attention_op, prompt_attention_reference
from vita_clip.kernels.summary_attention import summary_attention, summary_attention_op, summary_attention_reference

SHAPES = [  # (videos, frames, tokens, heads, head_dim, local, n_global, summary)
    (1, 1, 5, 2, 16, True, 0, True),
    (2, 3, 17, 3, 32, True, 3, True),
    (3, 8, 50, 2, 64, True, 8, True),
    (1, 8, 197, 2, 64, True, 8, True),
    (2, 3, 17, 2, 16, False, 3, False),
    (2, 4, 50, 2, 32, True, 0, False),
    (1, 3, 5, 1, 16, False, 0, True),
    (2, 2, 17, 2, 16, False, 0, False),
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}".format(*s))
def test_prompt_attention_matches_float64_reference(shape):
    inputs = prompt_inputs(*shape, seed=sum(shape[:5]))
    out = prompt_attention(**inputs)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, list(inputs.values()), grad)
    ref_inputs = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    ref, _ = prompt_attention_reference(**ref_inputs)
    ref_grads = torch.autograd.grad(ref, list(ref_inputs.values()), grad.double())
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert rel_err(out, ref) <= 1e-5
    for name, g, rg in zip(inputs, grads, ref_grads):
        assert g.shape == rg.shape, name
        assert rel_err(g, rg) <= 1e-4, name


def test_prompt_attention_log_sum_exp():
    inputs = {k: v.detach() for k, v in prompt_inputs(2, 3, 17, 2, 16, True, 3, True).items()}
    _, lse = prompt_attention_op(*(inputs.get(n) for n in ("q", "k", "v", "k_local", "v_local", "k_global",
                                                           "v_global", "k_summary", "v_summary")))
    _, ref_lse = prompt_attention_reference(**{k: v.double() for k, v in inputs.items()})
    assert lse.dtype == torch.float32 and rel_err(lse, ref_lse) <= 1e-6


def test_prompt_attention_fp16_and_bf16_stay_close():
    inputs = prompt_inputs(2, 3, 17, 2, 32, True, 3, True)
    ref, _ = prompt_attention_reference(**{k: v.detach().double() for k, v in inputs.items()})
    for dtype, tol in ((torch.float16, 5e-3), (torch.bfloat16, 3e-2)):
        out = prompt_attention(**{k: v.detach().to(dtype) for k, v in inputs.items()})
        assert out.dtype == dtype and rel_err(out, ref) <= tol


@pytest.mark.parametrize("backend", ["cpp", "composite"])
def test_prompt_attention_output_feeds_out_proj_and_takes_its_gradient_without_copies(backend, request,
                                                                                      monkeypatch):
    """As the models call it (q/k/v views of one packed projection): the output has the strides
    of a contiguous (F, L, H, d), so the reshape for out_proj is a view, and autograd hands the
    backward the gradient in that layout, which reaches the implementation uncopied."""
    if backend == "cpp":
        request.getfixturevalue("extension")
    previous = _cpu_extension.get_cpu_backend()
    _cpu_extension.set_cpu_backend(backend)
    request.addfinalizer(lambda: _cpu_extension.set_cpu_backend(previous))
    tensors = prompt_tensors(2, 3, 17, 4, 16, 3, seed=5)
    f, h, n, d = tensors["q"].shape
    qkv = torch.randn(f, n, 3, h, d, requires_grad=True)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    seen = {}
    backward_op, composite_backward = pa.prompt_attention_backward_op, pa._composite_backward

    def recording_op(grad_out, *args):
        seen["op"] = grad_out
        return backward_op(grad_out, *args)

    def recording_composite(grad_out, *args):
        seen["composite"] = grad_out
        return composite_backward(grad_out, *args)

    monkeypatch.setattr(pa, "prompt_attention_backward_op", recording_op)
    monkeypatch.setattr(pa, "_composite_backward", recording_composite)
    out = prompt_attention(q, k, v, *(tensors[name] for name in PROMPT_ATTENTION_INPUTS[3:]))
    assert out.shape == (f, h, n, d) and out.stride() == (n * h * d, d, h * d, 1)
    flat = out.transpose(1, 2).reshape(f, n, h * d)
    assert flat.data_ptr() == out.data_ptr() and flat.is_contiguous()
    torch.nn.functional.linear(flat, torch.randn(h * d, h * d)).sum().backward()
    assert seen["op"].transpose(1, 2).is_contiguous()
    if backend == "composite":
        assert seen["composite"].data_ptr() == seen["op"].data_ptr() and seen["composite"].stride() == \
            seen["op"].stride()


def test_prompt_attention_rejects_bad_shapes():
    inputs = {k: v.detach() for k, v in prompt_inputs(2, 3, 5, 2, 16, True, 3, True).items()}
    with pytest.raises(ValueError, match="k_local must be"):
        prompt_attention(**{**inputs, "k_local": inputs["k_local"][:, :1], "v_local": inputs["v_local"][:, :1]})
    with pytest.raises(ValueError, match="both be given"):
        prompt_attention(**{**inputs, "v_global": None})
    with pytest.raises(ValueError, match="k_summary must be"):
        prompt_attention(**{**inputs, "k_summary": inputs["k_summary"][:5], "v_summary": inputs["v_summary"][:5]})


def summary_inputs(videos, frames, width, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).requires_grad_(True)

    s = width ** -0.5
    return [r(videos, frames, width), r(width, scale=0.1, shift=1.0), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1)]


@pytest.mark.parametrize("videos, frames, width, heads", [(1, 1, 32, 2), (2, 3, 48, 3), (3, 8, 64, 4), (2, 16, 64, 1)])
def test_summary_attention_matches_float64_reference(videos, frames, width, heads):
    inputs = summary_inputs(videos, frames, width, seed=videos * 100 + frames)
    out = summary_attention(*inputs, heads=heads)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, inputs, grad)
    ref_inputs = [t.detach().double().requires_grad_(True) for t in inputs]
    ref = summary_attention_reference(*ref_inputs, heads=heads)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double())
    assert rel_err(out, ref) <= 1e-5
    scale = max(rg.norm().item() for rg in ref_grads)
    for i, (g, rg) in enumerate(zip(grads, ref_grads)):
        # exactly-zero true gradients (the k bias: softmax ignores a per-query constant; q and k
        # with one frame) get rounding noise: there, errors are measured against the largest gradient
        assert (g.double() - rg).norm().item() <= 1e-4 * max(rg.norm().item(), 1e-2 * scale), i


def test_opcheck_both_ops():
    inputs = {k: v.detach() for k, v in prompt_inputs(2, 3, 5, 2, 16, True, 3, True).items()}
    args = tuple(inputs.get(n) for n in ("q", "k", "v", "k_local", "v_local", "k_global", "v_global",
                                        "k_summary", "v_summary"))
    torch.library.opcheck(prompt_attention_op, tuple(a.requires_grad_(True) for a in args))
    no_prompts = args[:3] + (None,) * 6
    torch.library.opcheck(prompt_attention_op, no_prompts)
    summary = summary_inputs(2, 3, 32)
    torch.library.opcheck(summary_attention_op, (*summary, 2, 1e-5))
