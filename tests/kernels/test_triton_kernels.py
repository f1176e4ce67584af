"""The Triton kernels, launched directly, against the float64 eager references.

Without a GPU, ``conftest.py`` sets ``TRITON_INTERPRET=1`` before triton is imported and the
kernels run on CPU tensors in Triton's interpreter (the op dispatch would pick the CPU
composite, so the launchers are called directly). With CUDA the same comparisons run on the
GPU, plus bfloat16 and the ops' CUDA registrations. Every launcher allocation is filled with
NaN first, so an element a kernel fails to write makes the comparison fail. Fresh random
inputs, odd sizes; errors are relative (norm of the difference / norm of the reference).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch

from helpers import TRITON_DEVICES as DEVICES
from helpers import needs_cuda, needs_triton, rel_err
from vita_clip.kernels import _launch
from vita_clip.kernels import prompt_attention as pa
from vita_clip.kernels import summary_attention as sa

NAMES = ("q", "k", "v", "k_local", "v_local", "k_global", "v_global", "k_summary", "v_summary")



def randn(shape, seed: int, device, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device, dtype)


@pytest.fixture(autouse=True)
def poisoned_allocations(monkeypatch):
    """Outputs and scratch buffers of the launchers start as NaN."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, math.nan, dtype=dtype, device=device)

    monkeypatch.setattr(_launch, "empty", nan_empty)


def test_allocations_are_poisoned():
    """The fixture above is in effect (otherwise the 'unwritten element' checks would be void)."""
    assert _launch.empty((3,), torch.float32, "cpu").isnan().all()


# -- prompt attention --------------------------------------------------------------------------


def prompt_tensors(videos, frames, tokens, heads, head_dim, local, n_global, summary, seed, device="cpu"):
    """Fresh float64 inputs (None for absent sources); local prompts: one per frame (T_l = T)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    f = videos * frames
    t = {name: None for name in NAMES}
    t |= {"q": r(f, heads, tokens, head_dim), "k": r(f, heads, tokens, head_dim), "v": r(f, heads, tokens, head_dim)}
    if local:
        t |= {"k_local": r(videos, heads, frames, head_dim), "v_local": r(videos, heads, frames, head_dim)}
    if n_global:
        t |= {"k_global": r(heads, n_global, head_dim), "v_global": r(heads, n_global, head_dim)}
    if summary:
        t |= {"k_summary": r(f, heads, head_dim), "v_summary": r(f, heads, head_dim)}
    return t


def packed_views(t: dict) -> dict:
    """The same values as the strided views ``VitaVisionTransformer.fused_layer`` passes: q/k/v
    from a packed (F, L, 3, H, d) projection, prompts from packed (..., 2, H, d) k/v projections."""
    out = dict(t)
    qkv = torch.stack([t["q"], t["k"], t["v"]]).permute(1, 3, 0, 2, 4).contiguous()  # (F, L, 3, H, d)
    out["q"], out["k"], out["v"] = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    if t["k_local"] is not None:  # (B, T, 2, H, d) -> (B, H, T, d)
        kv = torch.stack([t["k_local"], t["v_local"]]).permute(1, 3, 0, 2, 4).contiguous()
        out["k_local"], out["v_local"] = (kv.select(2, i).transpose(1, 2) for i in range(2))
    if t["k_global"] is not None:  # (M, 2, H, d) -> (H, M, d)
        kv = torch.stack([t["k_global"], t["v_global"]]).permute(2, 0, 1, 3).contiguous()
        out["k_global"], out["v_global"] = (kv.select(1, i).transpose(0, 1) for i in range(2))
    if t["k_summary"] is not None:  # (F, 2, H, d) -> (F, H, d)
        kv = torch.stack([t["k_summary"], t["v_summary"]], 1)
        out["k_summary"], out["v_summary"] = kv.select(1, 0), kv.select(1, 1)
    assert not out["q"].is_contiguous()
    return out


def reference_with_grads(t: dict, grad: torch.Tensor):
    """float64 reference output, lse and the gradients of every present input."""
    inputs = {n: x.double().requires_grad_(True) for n, x in t.items() if x is not None}
    out, lse = pa.prompt_attention_reference(**inputs)
    grads = torch.autograd.grad(out, list(inputs.values()), grad.double())
    return out, lse, dict(zip(inputs, grads))


def run_prompt_kernels(t: dict, grad: torch.Tensor):
    args = [t[n] for n in NAMES]
    out, lse = pa.prompt_attention_forward(*args)
    grads = pa.prompt_attention_backward(grad, *args, out, lse)
    return out, lse, dict(zip(NAMES, grads))


PROMPT_SHAPES = [  # (videos, frames, tokens, heads, head_dim, local, n_global, summary, packed)
    (1, 1, 5, 2, 16, True, 0, True, False),  # one frame, no global prompts
    (2, 3, 17, 3, 32, True, 3, True, True),  # every source, strided views
    (3, 8, 50, 2, 64, True, 8, True, False),
    (1, 8, 197, 1, 64, True, 8, True, True),  # ViT-B/16 token count, several key/query tiles
    (2, 3, 17, 2, 16, False, 3, False, False),  # global prompts only
    (2, 3, 50, 2, 32, True, 0, False, True),  # local prompts only
    (1, 3, 5, 1, 16, False, 0, True, False),  # summary only
    (2, 2, 17, 2, 16, False, 0, False, False),  # no prompts: plain attention
    (1, 32, 5, 1, 16, True, 16, True, False),  # the largest prompt counts: T_l = 32, M = 16
    (1, 3, 17, 1, 48, True, 3, True, False),  # head dim that is not a power of two (padded)
]


def prompt_id(s):
    return "B{}T{}L{}H{}d{}-loc{}-M{}-sum{}-packed{}".format(*s)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", PROMPT_SHAPES, ids=prompt_id)
def test_prompt_attention_kernels_match_float64_reference(device, shape):
    *dims, packed = shape
    t64 = prompt_tensors(*dims, seed=sum(dims[:5]) + 7, device=device)
    grad = randn(t64["q"].shape, sum(dims[:5]), device)
    ref, ref_lse, ref_grads = reference_with_grads(t64, grad)
    t = {n: x.float() if x is not None else None for n, x in t64.items()}
    if packed:
        t = packed_views(t)
        grad = grad.float().transpose(1, 2).contiguous().transpose(1, 2)  # strided gradient too
    out, lse, grads = run_prompt_kernels(t, grad.float())
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.transpose(1, 2).is_contiguous()
    assert lse.dtype == torch.float32 and lse.shape == ref_lse.shape
    assert rel_err(out, ref) <= 1e-5
    assert rel_err(lse, ref_lse) <= 1e-6
    for name in NAMES:
        if t[name] is None:
            assert grads[name] is None, name
            continue
        assert grads[name].shape == t[name].shape and grads[name].dtype == torch.float32, name
        assert rel_err(grads[name], ref_grads[name]) <= 1e-4, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape", [(2, 3, 17, 2, 32, True, 3, True), (1, 8, 50, 2, 64, True, 8, True)],
                         ids=lambda s: prompt_id((*s, False)))
def test_prompt_attention_kernels_float16(device, shape):
    t16 = {n: x.half() if x is not None else None for n, x in prompt_tensors(*shape, seed=11, device=device).items()}
    grad = randn(t16["q"].shape, 12, device, torch.float16)
    ref, _, ref_grads = reference_with_grads(t16, grad)  # float64 from the float16 values
    out, _, grads = run_prompt_kernels(t16, grad)
    assert out.dtype == torch.float16
    assert rel_err(out, ref) <= 2e-3
    for name, g in ref_grads.items():
        assert grads[name].dtype == torch.float16 and rel_err(grads[name], g) <= 3e-3, name


def test_prompt_attention_output_is_in_out_proj_layout():
    """out (F, H, L, d) is laid out as a contiguous (F, L, H, d): the models' reshape for out_proj
    is a view of it, so nothing copies the attention output between the kernel and out_proj."""
    t = {n: x.float() if x is not None else None for n, x in prompt_tensors(2, 3, 5, 4, 16, True, 3, True, 1).items()}
    with _launch.record_launches() as launches:
        out, _ = pa.prompt_attention_forward(*packed_views(t).values())
    assert launches and all(kernel is pa._prompt_attention_fwd_kernel and any(a is out for a in args)
                            for kernel, _, args, _ in launches)
    f, h, n, d = out.shape
    assert out.stride() == (n * h * d, d, h * d, 1)
    flat = out.transpose(1, 2).reshape(f, n, h * d)
    assert flat.is_contiguous() and flat.data_ptr() == out.data_ptr()


@needs_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_prompt_attention_launchers_pass_torch_fp32_dot_precision(dtype):
    """float32 dots use TF32 exactly when torch's CUDA matmuls may (16-bit dots ignore it)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    t = {n: x.to(dtype) if x is not None else None for n, x in prompt_tensors(1, 3, 5, 2, 16, True, 3, True, 1).items()}
    args = [t[n] for n in NAMES]
    try:
        for setting in ("ieee", "tf32"):
            matmul.fp32_precision = setting
            with _launch.record_launches() as launches:
                out, lse = pa.prompt_attention_forward(*args)
                pa.prompt_attention_backward(out, *args, out, lse)
            expected = setting if dtype == torch.float32 else "tf32"
            assert len(launches) >= 3 and all(kw["PRECISION"] == expected for *_, kw in launches), setting
    finally:
        matmul.fp32_precision = before


@pytest.mark.parametrize("device", DEVICES)
def test_every_prompt_attention_config_matches_float64_reference(device, monkeypatch):
    """Each tile shape of the config space (all dtypes' lists, here in float32 with IEEE dots:
    tiles, not dtypes, decide which elements a program owns), forward and backward."""
    assert _launch.fp32_dot_precision() == "ieee"
    for kernel in ("fwd", "dq", "dkdv"):
        tiles = {c[:2]: c for key, space in pa._CONFIG_SPACE.items() if key[0] == kernel and key[2] for c in space}
        monkeypatch.setitem(pa._CONFIG_SPACE, (kernel, "ieee", True), list(tiles.values()))
    t64 = prompt_tensors(1, 3, 70, 1, 64, True, 5, True, seed=3, device=device)  # 70 tokens: 128-wide tiles
    grad = randn(t64["q"].shape, 4, device)
    ref, ref_lse, ref_grads = reference_with_grads(t64, grad)
    t = {n: x.float() if x is not None else None for n, x in t64.items()}
    candidates = {kernel: pa._launch_configs(kernel, t["q"], 3, 5) for kernel in ("fwd", "dq", "dkdv")}
    assert max(len(c) for c in candidates.values()) >= 4
    names = {pa._prompt_attention_fwd_kernel: "fwd", pa._prompt_attention_bwd_dq_kernel: "dq",
             pa._prompt_attention_bwd_dkdv_kernel: "dkdv"}
    chosen, real = {}, _launch.launch_tuned

    def forced(kernel, grid, configs, key, *args, **kwargs):  # launch the config under test
        assert chosen[names[kernel]] in configs
        return real(kernel, grid, [chosen[names[kernel]]], key, *args, **kwargs)

    monkeypatch.setattr(_launch, "launch_tuned", forced)
    for i in range(max(len(c) for c in candidates.values())):
        chosen.update({kernel: c[i % len(c)] for kernel, c in candidates.items()})
        out, lse, grads = run_prompt_kernels(t, grad.float())
        assert rel_err(out, ref) <= 1e-5 and rel_err(lse, ref_lse) <= 1e-6, chosen
        for name, g in ref_grads.items():
            assert rel_err(grads[name], g) <= 1e-4, (name, chosen)


@needs_triton
@needs_cuda
@pytest.mark.parametrize("shape", [(2, 3, 17, 2, 32, True, 3, True), (2, 8, 197, 2, 64, True, 8, True),
                                   (1, 4, 257, 2, 128, True, 16, True)], ids=lambda s: prompt_id((*s, True)))
def test_prompt_attention_kernels_bfloat16_gpu(shape):
    tb = {n: x.bfloat16() if x is not None else None
          for n, x in prompt_tensors(*shape, seed=13, device="cuda").items()}
    tb = packed_views(tb)
    grad = randn(tb["q"].shape, 14, "cuda", torch.bfloat16)
    ref, _, ref_grads = reference_with_grads(tb, grad)
    out, _, grads = run_prompt_kernels(tb, grad)
    assert out.dtype == torch.bfloat16 and rel_err(out, ref) <= 2e-2
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) <= 4e-2, name


@needs_triton
@needs_cuda
@pytest.mark.parametrize("precision, tol, grad_tol", [("ieee", 1e-5, 1e-4), ("tf32", 2e-3, 5e-3)])
def test_prompt_attention_autotuned_float32_gpu(precision, tol, grad_tol, monkeypatch):
    """VITA_CLIP_AUTOTUNE=1 times each kernel's config space once per shape; IEEE and TF32 dots."""
    monkeypatch.setenv("VITA_CLIP_AUTOTUNE", "1")
    monkeypatch.setattr(_launch, "_tuned", {})
    monkeypatch.setattr(torch.backends.cuda.matmul, "fp32_precision", precision)
    t64 = prompt_tensors(2, 8, 197, 2, 64, True, 8, True, seed=9, device="cuda")
    grad = randn(t64["q"].shape, 10, "cuda")
    ref, _, ref_grads = reference_with_grads(t64, grad)
    out, _, grads = run_prompt_kernels(packed_views({n: x.float() if x is not None else None for n, x in t64.items()}),
                                       grad.float())
    assert len(_launch._tuned) == 3 and rel_err(out, ref) <= tol
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) <= grad_tol, name


@needs_triton
@needs_cuda
def test_prompt_attention_op_dispatches_to_the_kernels_on_cuda():
    t = {n: x.float() if x is not None else None
         for n, x in prompt_tensors(2, 3, 17, 2, 32, True, 3, True, seed=5, device="cuda").items()}
    args = [t[n] for n in NAMES]
    out, lse = pa.prompt_attention_op(*args)
    kernel_out, kernel_lse = pa.prompt_attention_forward(*args)
    assert torch.equal(out, kernel_out) and torch.equal(lse, kernel_lse)
    torch.library.opcheck(pa.prompt_attention_op, tuple(a.requires_grad_(True) if a is not None else None
                                                        for a in args))


@pytest.mark.parametrize("device", DEVICES)
def test_prompt_attention_launchers_reject_bad_inputs(device, monkeypatch):
    t = {n: x.float() if x is not None else None
         for n, x in prompt_tensors(2, 3, 5, 2, 16, True, 3, True, seed=1, device=device).items()}
    args = [t[n] for n in NAMES]
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        pa.prompt_attention_forward(*[a.double() if a is not None else None for a in args])
    with pytest.raises(ValueError, match="k_global is torch.float16"):
        pa.prompt_attention_forward(*args[:5], t["k_global"].half(), t["v_global"].half(), *args[7:])
    with pytest.raises(ValueError, match="k_local must be"):  # the op's own checks run first
        pa.prompt_attention_forward(*args[:3], t["k_local"][:, :1], t["v_local"][:, :1], *args[5:])
    wide = prompt_tensors(1, 1, 5, 1, 160, False, 0, False, seed=1, device=device)
    with pytest.raises(ValueError, match="head_dim must be <= 128"):
        pa.prompt_attention_forward(*(wide[n].float() if wide[n] is not None else None for n in NAMES))
    out, lse = pa.prompt_attention_forward(*args)
    with pytest.raises(ValueError, match=r"lse must be \(6, 2, 5\) float32"):
        pa.prompt_attention_backward(out, *args, out, lse[:, :1])
    with pytest.raises(ValueError, match="grad_out"):
        pa.prompt_attention_backward(out[:1], *args, out, lse)
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="need CUDA tensors"):
            pa.prompt_attention_forward(*args)


# -- summary attention -------------------------------------------------------------------------


def summary_tensors(videos, frames, width, seed, device="cpu"):
    """Fresh float64 inputs in the order of ``summary_attention``'s arguments."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0, shift=0.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale + shift).to(device)

    s = width ** -0.5
    return [r(videos, frames, width), r(width, scale=0.1, shift=1.0), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1),
            r(width, width, scale=s), r(width, scale=0.1), r(width, width, scale=s), r(width, scale=0.1)]


def summary_reference(inputs, heads, grad):
    ref_inputs = [t.double().requires_grad_(True) for t in inputs]
    out = sa.summary_attention_reference(*ref_inputs, heads=heads)
    return out, torch.autograd.grad(out, ref_inputs, grad.double())


def check_summary_grads(grads, ref_grads, inputs, tol):
    # the k bias gets an exactly-zero gradient (softmax ignores a per-query constant), so errors
    # are measured against the largest gradient there (as in test_fused_ops.py)
    scale = max(g.norm().item() for g in ref_grads)
    for name, g, ref, x in zip(("c",) + sa.WEIGHTS, grads, ref_grads, inputs):
        assert g.shape == x.shape and g.dtype == x.dtype, name
        err = (g.double().cpu() - ref.cpu()).norm().item()
        assert err <= tol * max(ref.norm().item(), 1e-3 * scale), name


SUMMARY_SHAPES = [  # (videos, frames, width, heads)
    (1, 1, 32, 2),  # one frame: q/k weights get zero gradients
    (2, 3, 48, 3),  # width not a multiple of the 32-wide tiles
    (3, 8, 64, 4),
    (2, 16, 64, 1),
    (1, 32, 64, 2),  # the longest clips
    (2, 5, 80, 5),
    (2, 3, 160, 2),  # head dim 80 (ViT-H), padded to 128
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("videos, frames, width, heads", SUMMARY_SHAPES)
def test_summary_attention_kernels_match_float64_reference(device, videos, frames, width, heads):
    inputs64 = summary_tensors(videos, frames, width, seed=videos * 100 + frames + width, device=device)
    grad = randn((videos, frames, width), seed=frames + width, device=device)
    ref, ref_grads = summary_reference(inputs64, heads, grad)
    inputs = [t.float() for t in inputs64]
    if frames > 1:  # c as a strided view
        inputs[0] = torch.cat([inputs[0], inputs[0]], dim=-1)[..., :width]
    out = sa.summary_attention_forward(*inputs, heads)
    assert out.dtype == torch.float32 and out.shape == ref.shape and out.is_contiguous()
    assert rel_err(out, ref) <= 1e-5
    grads = sa.summary_attention_backward(grad.float(), *inputs, heads)
    check_summary_grads(grads, ref_grads, inputs, 1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 8e-3), (torch.float16, 1e-3)],
                         ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("videos, frames, heads, head_dim", [(3, 3, 2, 64), (2, 8, 3, 16), (1, 16, 1, 80),
                                                             (1, 64, 1, 128)])
def test_frame_attention_kernels_match_float64_reference(device, dtype, tol, videos, frames, heads, head_dim):
    """The attention kernels alone: (B, T, D) q/k/v as the projections write them, one program
    per (video, head); float64 SDPA from the same (rounded) inputs."""
    shape = (videos, frames, heads * head_dim)
    q, k, v, grad = (randn(shape, seed=frames + head_dim + i, device=device, dtype=dtype) for i in range(4))
    ref_inputs = [x.double().cpu().requires_grad_(True) for x in (q, k, v)]
    ref = sa._sdpa_over_frames(*ref_inputs, heads)
    ref_grads = torch.autograd.grad(ref, ref_inputs, grad.double().cpu())
    out = sa.frame_attention_forward(q, k, v, heads)
    assert out.dtype == dtype and out.shape == shape and rel_err(out, ref) <= tol
    for name, g, rg in zip("qkv", sa.frame_attention_backward(grad, q, k, v, heads), ref_grads):
        assert g.dtype == dtype and g.shape == shape, name
        assert rel_err(g, rg) <= 2 * tol, name


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_summary_attention_kernels_16bit(device, dtype):
    """16-bit c and parameters in and out, within twice torch's own error in that dtype (the op's
    CPU composite, torch ops in 16 bits) plus a quarter of the dtype's epsilon; the kernels upcast
    after every load, so bfloat16 works in the interpreter too."""
    inputs = [t.to(dtype) for t in summary_tensors(2, 8, 64, seed=21, device=device)]
    grad = randn((2, 8, 64), 22, device, dtype)
    ref, ref_grads = summary_reference(inputs, 4, grad)  # float64 from the 16-bit values
    their_inputs = [t.detach().cpu().requires_grad_(True) for t in inputs]
    theirs = sa.summary_attention(*their_inputs, heads=4)
    their_grads = torch.autograd.grad(theirs, their_inputs, grad.cpu())
    eps = torch.finfo(dtype).eps
    out = sa.summary_attention_forward(*inputs, 4)
    assert out.dtype == dtype and rel_err(out, ref) <= 2 * rel_err(theirs, ref) + eps / 4
    floor = 1e-3 * max(g.norm().item() for g in ref_grads)  # the k bias has an exactly-zero gradient
    grads = sa.summary_attention_backward(grad, *inputs, 4)
    for name, g, tg, rg, x in zip(("c",) + sa.WEIGHTS, grads, their_grads, ref_grads, inputs):
        assert g.dtype == x.dtype, name
        assert rel_err(g, rg, floor) <= 2 * rel_err(tg, rg, floor) + eps / 4, name


@needs_triton
@needs_cuda
def test_summary_attention_kernels_vit_b_width_gpu():
    inputs = summary_tensors(4, 8, 768, seed=3, device="cuda")
    grad = randn((4, 8, 768), 4, "cuda")
    ref, ref_grads = summary_reference(inputs, 12, grad)
    inputs = [t.float() for t in inputs]
    assert rel_err(sa.summary_attention_forward(*inputs, 12), ref) <= 1e-5
    check_summary_grads(sa.summary_attention_backward(grad.float(), *inputs, 12), ref_grads, inputs, 1e-4)


@needs_triton
@needs_cuda
def test_summary_attention_op_dispatches_to_the_kernels_on_cuda():
    inputs = [t.float() for t in summary_tensors(2, 3, 48, seed=5, device="cuda")]
    assert torch.equal(sa.summary_attention_op(*inputs, 3, 1e-5), sa.summary_attention_forward(*inputs, 3, 1e-5))
    torch.library.opcheck(sa.summary_attention_op, (*(t.requires_grad_(True) for t in inputs), 3, 1e-5))


@pytest.mark.parametrize("device", DEVICES)
def test_summary_attention_launchers_reject_bad_inputs(device, monkeypatch):
    inputs = [t.float() for t in summary_tensors(2, 3, 32, seed=1, device=device)]
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        sa.summary_attention_forward(*(t.double() for t in inputs), 2)
    with pytest.raises(ValueError, match="q_weight is torch.float64: the Triton kernels take"):
        sa.summary_attention_forward(*inputs[:3], inputs[3].double(), *inputs[4:], 2)
    with pytest.raises(ValueError, match=r"out_weight must be \(32, 32\)"):
        sa.summary_attention_forward(*inputs[:9], inputs[9][:, :16], inputs[10], 2)
    with pytest.raises(ValueError, match="at most 64 frames"):
        sa.summary_attention_forward(torch.zeros(1, 65, 32, device=device), *inputs[1:], 2)
    with pytest.raises(ValueError, match="grad must be"):
        sa.summary_attention_backward(inputs[0][:1], *inputs, 2)
    if device == "cpu":
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        with pytest.raises(ValueError, match="need CUDA tensors"):
            sa.summary_attention_forward(*inputs, 2)


# -- without triton ----------------------------------------------------------------------------

WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # import triton -> ImportError
import torch
from vita_clip.kernels import prompt_attention as pa, summary_attention as sa
assert pa.triton is None and sa.triton is None
for op in ("vita_clip::prompt_attention", "vita_clip::summary_attention_backward"):
    assert not torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA"), op
q = torch.randn(2, 1, 5, 16, requires_grad=True)
pa.prompt_attention(q, q, q).sum().backward()
c = torch.randn(1, 3, 16)
w = [torch.ones(16), torch.zeros(16)] + [torch.eye(16), torch.zeros(16)] * 4
assert sa.summary_attention(c, *w, heads=2).shape == (1, 3, 16)
try:
    pa.prompt_attention_forward(q, q, q)
except RuntimeError as e:
    assert "need the `triton` package" in str(e), e
else:
    raise AssertionError("launcher ran without triton")
print("ok")
"""


def test_package_and_cpu_composite_work_without_triton():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", WITHOUT_TRITON], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-3000:]
