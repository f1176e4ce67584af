"""The C++ CPU kernel of the prompt attention (csrc/) against the float64 reference and the composite.

The extension must have been built (``make install`` builds it): without it these tests fail,
unless ``VITA_CLIP_ALLOW_NO_EXTENSION=1`` (then they skip), so CI proves the build happened.
"""
from __future__ import annotations

import warnings

import pytest
import torch

from helpers import PROMPT_ATTENTION_INPUTS, prompt_inputs, rel_err
from vita_clip import kernels
from vita_clip.kernels import _cpu_extension
from vita_clip.kernels.prompt_attention import (
    _composite_backward,
    _composite_forward,
    prompt_attention,
    prompt_attention_op,
    prompt_attention_reference,
)

NAMES = PROMPT_ATTENTION_INPUTS




@pytest.fixture
def backend():
    """``backend(name)`` selects the CPU backend for the test; the previous choice is restored."""
    saved = _cpu_extension._backend
    yield kernels.set_cpu_backend
    _cpu_extension._backend = saved


def args_of(inputs: dict) -> list:
    return [inputs[n].detach() if n in inputs else None for n in NAMES]


SHAPES = [  # (videos, frames, tokens, heads, head_dim, local, n_global, summary); F = videos * frames
    (1, 3, 197, 2, 16, True, 8, True),  # F=3, ViT-B/16 token count
    (2, 4, 257, 1, 32, True, 3, True),  # F=8, ViT-B/14-ish
    (4, 4, 33, 2, 24, True, 0, False),  # F=16, odd head dim, no global/summary
    (3, 1, 5, 1, 16, False, 0, True),  # only the summary prompt
    (2, 2, 17, 2, 16, False, 5, False),  # only global prompts
    (2, 3, 9, 1, 8, False, 0, False),  # no prompts at all
    (1, 2, 600, 1, 8, True, 8, True),  # more keys than one key block (512): online softmax across blocks
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}".format(*s))
def test_cpp_matches_float64_reference(extension, shape, dtype):
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # fresh inputs on every run
    inputs = prompt_inputs(*shape, dtype=dtype, seed=seed)
    args = args_of(inputs)
    out, lse = extension.prompt_attention_fwd(*args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grads = extension.prompt_attention_bwd(grad.to(dtype), *args, out, lse)
    ref_inputs = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    ref, ref_lse = prompt_attention_reference(**ref_inputs)
    ref_grads = dict(zip(ref_inputs, torch.autograd.grad(ref, list(ref_inputs.values()), grad)))
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    assert out.dtype == dtype and lse.dtype == dtype and out.is_contiguous(), f"seed {seed}"
    assert rel_err(out, ref) <= tol and rel_err(lse, ref_lse) <= tol, f"seed {seed}"
    for name, g in zip(NAMES, grads):
        if name not in inputs:
            assert g.numel() == 0, name
            continue
        assert g.shape == inputs[name].shape and g.dtype == dtype, name
        assert rel_err(g, ref_grads[name]) <= 10 * tol, f"{name} seed {seed}"


def test_cpp_reads_strided_sources_in_place(extension):
    """The model's layout: q/k/v views of one qkv tensor, transposed prompts, broadcast globals."""
    frames, tokens, heads, dim = 6, 11, 3, 16
    g = torch.Generator().manual_seed(3)
    qkv = torch.randn(frames, tokens, 3, heads, dim, generator=g, dtype=torch.float64)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    kl, vl = torch.randn(2, 2, 3, heads, dim, generator=g, dtype=torch.float64).transpose(2, 3).unbind(1)
    kg, vg = torch.randn(2, heads, 1, dim, generator=g, dtype=torch.float64).expand(2, heads, 4, dim).unbind(0)
    ks, vs = torch.randn(frames, 2, heads, dim, generator=g, dtype=torch.float64).unbind(1)
    args = [q, k, v, kl, vl, kg, vg, ks, vs]
    assert not q.is_contiguous() and kg.stride(1) == 0
    out, lse = extension.prompt_attention_fwd(*args)
    ref, ref_lse = prompt_attention_reference(*args)
    assert rel_err(out, ref) <= 1e-13 and rel_err(lse, ref_lse) <= 1e-13
    grad = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = extension.prompt_attention_bwd(grad.transpose(1, 2).contiguous().transpose(1, 2), *args, out, lse)
    ref_grads = _composite_backward(grad, *[a.contiguous() for a in args], ref, ref_lse)
    for name, a, b in zip(NAMES, grads, ref_grads):
        assert rel_err(a, b) <= 1e-12, name


def test_cpp_backward_is_deterministic_and_thread_count_independent(extension):
    args = args_of(prompt_inputs(3, 4, 33, 2, 16, True, 8, True))
    out, lse = extension.prompt_attention_fwd(*args)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    first = extension.prompt_attention_bwd(grad, *args, out, lse)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = extension.prompt_attention_bwd(grad, *args, out, lse)
        single_out, _ = extension.prompt_attention_fwd(*args)
    finally:
        torch.set_num_threads(threads)
    again = extension.prompt_attention_bwd(grad, *args, out, lse)
    assert torch.equal(single_out, out)
    for name, a, b, c in zip(NAMES, first, again, single):
        assert torch.equal(a, b) and torch.equal(a, c), name


@pytest.mark.parametrize("shape", [(2, 3, 17, 3, 32, True, 3, True), (1, 8, 197, 2, 64, True, 8, True),
                                   (2, 2, 17, 2, 16, False, 0, False)], ids=str)
def test_op_routes_to_cpp_and_agrees_with_composite(extension, backend, shape):
    inputs = prompt_inputs(*shape)
    args = args_of(inputs)
    backend("cpp")
    out, lse = prompt_attention_op(*args)
    direct_out, direct_lse = extension.prompt_attention_fwd(*args)
    assert torch.equal(out, direct_out) and torch.equal(lse, direct_lse)  # the op ran the C++ kernel
    comp_out, comp_lse = _composite_forward(*args)
    assert rel_err(out, comp_out) <= 1e-6 and rel_err(lse, comp_lse) <= 1e-6
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    cpp_grads = torch.autograd.grad(prompt_attention(**inputs), list(inputs.values()), grad)
    backend("composite")
    comp_grads = torch.autograd.grad(prompt_attention(**inputs), list(inputs.values()), grad)
    for name, a, b in zip(inputs, cpp_grads, comp_grads):
        assert a.shape == b.shape and rel_err(a, b) <= 1e-5, name


def test_gradcheck_and_opcheck_through_cpp(extension, backend):
    backend("cpp")
    inputs = prompt_inputs(2, 2, 5, 2, 8, True, 3, True, dtype=torch.float64, seed=7)
    args = tuple(inputs.get(n) for n in NAMES)
    assert torch.autograd.gradcheck(lambda *a: prompt_attention_op(*a)[0], args)
    torch.library.opcheck(prompt_attention_op, args)
    torch.library.opcheck(prompt_attention_op, tuple(a.detach().float() for a in args[:3]) + (None,) * 6)


def test_float16_takes_the_composite(backend):
    # bfloat16 runs the C++ kernel (test_cpu_extension_bf16.py); float16 has no C++ path
    backend("cpp")
    assert _cpu_extension.use_cpp(torch.bfloat16) and not _cpu_extension.use_cpp(torch.float16)
    inputs = {k: v.detach() for k, v in prompt_inputs(2, 3, 17, 2, 32, True, 3, True).items()}
    ref, _ = prompt_attention_reference(**{k: v.double() for k, v in inputs.items()})
    out = prompt_attention(**{k: v.half() for k, v in inputs.items()})
    assert out.dtype == torch.float16 and rel_err(out, ref) <= 5e-3


def test_backend_switch_and_environment(backend, monkeypatch):
    monkeypatch.setattr(_cpu_extension, "_backend", None)
    monkeypatch.delenv(_cpu_extension.ENV, raising=False)
    assert kernels.get_cpu_backend() == _cpu_extension.DEFAULT_BACKEND
    monkeypatch.setenv(_cpu_extension.ENV, "composite")
    assert kernels.get_cpu_backend() == "composite" and not _cpu_extension.use_cpp(torch.float32)
    backend("cpp")  # the call wins over the environment
    assert kernels.get_cpu_backend() == "cpp"
    with pytest.raises(ValueError, match="one of"):
        kernels.set_cpu_backend("mkl")
    monkeypatch.setattr(_cpu_extension, "_backend", None)
    monkeypatch.setenv(_cpu_extension.ENV, "cuda")
    with pytest.raises(ValueError, match="VITA_CLIP_CPU_KERNEL must be one of"):
        kernels.get_cpu_backend()


def test_missing_extension_falls_back_with_one_warning(backend, monkeypatch):
    def absent():
        raise ImportError("No module named 'vita_clip.kernels._prompt_attention_cpu'")

    monkeypatch.setattr(_cpu_extension, "_import_extension", absent)
    monkeypatch.setattr(_cpu_extension, "_loaded", None)
    monkeypatch.setattr(_cpu_extension, "_warned", False)
    backend("cpp")
    inputs = prompt_inputs(2, 3, 17, 2, 16, True, 3, True)
    ref_inputs = {k: v.detach().double().requires_grad_(True) for k, v in inputs.items()}
    ref, _ = prompt_attention_reference(**ref_inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            out = prompt_attention(**inputs)
            grads = torch.autograd.grad(out, list(inputs.values()), torch.ones_like(out))
    messages = [str(w.message) for w in caught if "C++ CPU kernel unavailable" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0], messages
    ref_grads = torch.autograd.grad(ref, list(ref_inputs.values()), torch.ones_like(ref))
    assert rel_err(out, ref) <= 1e-5
    for name, g, rg in zip(inputs, grads, ref_grads):
        assert rel_err(g, rg) <= 1e-4, name
    assert not _cpu_extension.extension_available()
