"""The C++ CPU kernel (csrc/) in bfloat16, against the float64 reference.

Tolerance: twice the error of torch's own CPU attention in bfloat16 on the same inputs (the
composite: flash attention for CPU over the concatenated keys) plus a quarter of bfloat16's
epsilon. The forward and the backward have two paths, the AVX-512 BF16 dot products (on CPUs
that have them, even head dims) and float32 on widened inputs (elsewhere, or switched off by
``set_bf16_dot(False)``): both are checked, and ``bf16_dot_calls()`` tells which one ran. As in
test_cpu_extension.py the extension must be built, unless ``VITA_CLIP_ALLOW_NO_EXTENSION=1``
(then these tests skip).
"""
from __future__ import annotations

import pytest
import torch

from helpers import PROMPT_ATTENTION_INPUTS, mixed_precision_bound, rel_err
from vita_clip import kernels
from vita_clip.kernels import _cpu_extension
from vita_clip.kernels import prompt_attention as pa

NAMES = PROMPT_ATTENTION_INPUTS
BF16 = torch.bfloat16
HAS_BF16_DOT = torch.cpu._is_avx512_bf16_supported()
needs_bf16_dot = pytest.mark.skipif(not HAS_BF16_DOT, reason="this CPU has no AVX-512 BF16")


@pytest.fixture(params=["dot", "widened"])
def bf16_path(request, extension):
    """Each bfloat16 path of the kernel in turn (the dot products only where the CPU has them)."""
    if request.param == "dot" and not HAS_BF16_DOT:
        pytest.skip("this CPU has no AVX-512 BF16")
    assert extension.set_bf16_dot(request.param == "dot") == (request.param == "dot")
    yield request.param
    extension.set_bf16_dot(True)




def inputs_of(videos, frames, tokens, heads, head_dim, local, n_global, summary, seed) -> list:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(BF16)

    f = videos * frames
    own = [r(f, heads, tokens, head_dim) for _ in range(3)]
    local_kv = [r(videos, heads, frames, head_dim) if local else None for _ in range(2)]
    global_kv = [r(heads, n_global, head_dim) if n_global else None for _ in range(2)]
    summary_kv = [r(f, heads, head_dim) if summary else None for _ in range(2)]
    return own + local_kv + global_kv + summary_kv


SHAPES = [  # (videos, frames, tokens, heads, head_dim, local, n_global, summary)
    (1, 3, 197, 2, 16, True, 8, True),
    (2, 8, 257, 1, 32, True, 3, True),
    (1, 16, 33, 2, 24, True, 0, False),
    (2, 3, 9, 1, 8, False, 5, False),
    (1, 3, 197, 2, 64, True, 8, True),   # ViT-B/16's head dim
    (1, 8, 300, 1, 40, True, 250, True),  # two key blocks (over 512 keys): online softmax across blocks
    (1, 3, 17, 1, 7, True, 2, True),      # odd head dim: the widened path on every CPU
]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}".format(*s))
def test_cpp_bfloat16_matches_float64_reference(extension, bf16_path, shape):
    args = inputs_of(*shape, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    grad = torch.randn(args[0].shape).to(BF16)
    ref, _ = pa.prompt_attention_reference(*(a.double() if a is not None else None for a in args))
    present = [i for i, a in enumerate(args) if a is not None]
    ref_inputs = [a.double().requires_grad_(True) if a is not None else None for a in args]
    ref_out, _ = pa.prompt_attention_reference(*ref_inputs)
    ref_grads = torch.autograd.grad(ref_out, [ref_inputs[i] for i in present], grad.double())

    calls = extension.bf16_dot_calls()
    out, lse = extension.prompt_attention_fwd(*args)
    grads = extension.prompt_attention_bwd(grad, *args, out, lse)
    ran_dot = bf16_path == "dot" and shape[4] % 2 == 0  # odd head dims are widened on every CPU
    assert [b - a for a, b in zip(calls, extension.bf16_dot_calls())] == [int(ran_dot)] * 2  # forward, backward
    their_out, their_lse = pa._composite_forward(*args)
    their_grads = pa._composite_backward(grad, *args, their_out, their_lse)

    assert out.dtype == BF16 and lse.dtype == torch.float32 and out.is_contiguous()
    assert rel_err(out, ref) <= mixed_precision_bound(rel_err(their_out, ref), BF16)
    for i, rg in zip(present, ref_grads):
        assert grads[i].dtype == BF16 and grads[i].shape == args[i].shape, NAMES[i]
        assert rel_err(grads[i], rg) <= mixed_precision_bound(rel_err(their_grads[i], rg), BF16), NAMES[i]


def test_op_runs_the_cpp_kernel_in_bfloat16(extension):
    """With the "cpp" backend a bfloat16 call of the op (what CPU autocast produces) is the C++ kernel's."""
    saved = _cpu_extension._backend
    try:
        kernels.set_cpu_backend("cpp")
        args = inputs_of(1, 3, 197, 2, 16, True, 8, True, seed=4)
        out, lse = pa.prompt_attention_op(*args)
        cpp_out, cpp_lse = extension.prompt_attention_fwd(*args)
        assert torch.equal(out, cpp_out) and torch.equal(lse, cpp_lse)
    finally:
        _cpu_extension._backend = saved


@needs_bf16_dot
@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}".format(*s))
def test_dot_product_and_widened_forwards_agree(extension, shape):
    """The two forward paths differ only by bfloat16 rounding (P is rounded for P V on the dot path)."""
    args = inputs_of(*shape, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    try:
        assert extension.set_bf16_dot(True) and "bf16=avx512bf16" in extension.backend_info()
        dot_out, dot_lse = extension.prompt_attention_fwd(*args)
        assert not extension.set_bf16_dot(False) and "bf16=widened" in extension.backend_info()
        out, lse = extension.prompt_attention_fwd(*args)
    finally:
        extension.set_bf16_dot(True)
    eps = torch.finfo(BF16).eps
    assert dot_out.dtype == BF16 and dot_lse.dtype == torch.float32 and dot_out.is_contiguous()
    assert 0 < rel_err(dot_out, out) <= 2 * eps  # not the same code, and the same attention
    assert rel_err(dot_lse, lse) <= 0.25 * eps  # scores and softmax statistics are float32 on both paths


@needs_bf16_dot
@pytest.mark.parametrize("shape", SHAPES[:6], ids=lambda s: "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}".format(*s))
def test_dot_product_and_widened_backwards_agree(extension, shape):
    """The two backward paths differ only by bfloat16 rounding (P and dS are rounded as operands of
    the dot products); both take the same forward's out and lse."""
    args = inputs_of(*shape, seed=int(torch.randint(0, 2**31 - 1, ()).item()))
    grad = torch.randn(args[0].shape).to(BF16)
    out, lse = extension.prompt_attention_fwd(*args)
    try:
        assert extension.set_bf16_dot(True)
        calls = extension.bf16_dot_calls()
        dot_grads = extension.prompt_attention_bwd(grad, *args, out, lse)
        assert extension.bf16_dot_calls()[1] == calls[1] + 1
        assert not extension.set_bf16_dot(False)
        grads = extension.prompt_attention_bwd(grad, *args, out, lse)
        assert extension.bf16_dot_calls()[1] == calls[1] + 1
    finally:
        extension.set_bf16_dot(True)
    eps = torch.finfo(BF16).eps
    for i, a in enumerate(args):
        if a is None:
            assert dot_grads[i].numel() == 0 and grads[i].numel() == 0, NAMES[i]
            continue
        assert dot_grads[i].dtype == BF16 and dot_grads[i].shape == a.shape and dot_grads[i].is_contiguous(), NAMES[i]
        assert 0 < rel_err(dot_grads[i], grads[i]) <= 2 * eps, NAMES[i]  # not the same code, and the same gradients
