"""The prompt attention op on CPU: the C++ kernel (csrc/) against the composite, same run.

ViT-B/16 shapes: 8 frames per video, 12 heads, 197 tokens, head dim 64, 8 local and 8 global
prompts, 1 summary token; batch 1 (F = 8 frames) and batch 4 (F = 32). Both providers go
through ``vita_clip::prompt_attention`` with the CPU backend switch, forward alone and
forward + backward (autograd, gradients of all nine inputs). The ratio cpp / composite of the
median times is reported at the end. In bfloat16, batch 1: the C++ kernel's AVX-512 BF16 dot
products against float32 on widened inputs, forward, and backward (interleaved rounds).
"""
from __future__ import annotations

import statistics
import time

import pytest
import torch

from recording import add_section, record, report_ratio
from vita_clip.kernels import _cpu_extension, set_cpu_backend
from vita_clip.kernels.prompt_attention import prompt_attention

FRAMES, HEADS, TOKENS, DIM, N_GLOBAL = 8, 12, 197, 64, 8


def inputs(videos: int) -> dict:
    g = torch.Generator().manual_seed(0)
    f = videos * FRAMES

    def r(*shape):
        return torch.randn(*shape, generator=g).requires_grad_(True)

    return dict(q=r(f, HEADS, TOKENS, DIM), k=r(f, HEADS, TOKENS, DIM), v=r(f, HEADS, TOKENS, DIM),
                k_local=r(videos, HEADS, FRAMES, DIM), v_local=r(videos, HEADS, FRAMES, DIM),
                k_global=r(HEADS, N_GLOBAL, DIM), v_global=r(HEADS, N_GLOBAL, DIM),
                k_summary=r(f, HEADS, DIM), v_summary=r(f, HEADS, DIM))


@pytest.fixture
def backend():
    saved = _cpu_extension._backend
    yield set_cpu_backend
    _cpu_extension._backend = saved


@pytest.mark.parametrize("pass_", ["forward", "forward+backward"])
@pytest.mark.parametrize("videos", [1, 4])
@pytest.mark.parametrize("provider", ["composite", "cpp"])
def test_prompt_attention_cpu(measure, backend, provider, videos, pass_):
    if provider == "cpp" and not _cpu_extension.extension_available():
        pytest.skip(f"C++ CPU extension not built ({_cpu_extension._load_error})")
    backend(provider)
    x = inputs(videos)
    grad = torch.randn(videos * FRAMES, HEADS, TOKENS, DIM, generator=torch.Generator().manual_seed(1))
    if pass_ == "forward":
        def fn():
            with torch.no_grad():
                return prompt_attention(**x)
    else:
        def fn():
            return torch.autograd.grad(prompt_attention(**x), list(x.values()), grad)
    group = f"prompt_attention CPU B/16 {videos}x{FRAMES} frames {pass_}"
    result = measure(group, provider, fn, rounds=20 if videos == 1 else 10)
    assert all(torch.isfinite(t).all() for t in (result if isinstance(result, tuple) else (result,)))
    report_ratio(group, "cpp", "composite")


@pytest.mark.parametrize("path", ["widened", "avx512bf16"])
def test_prompt_attention_cpu_bf16_forward(measure, backend, path):
    """The C++ kernel's two bfloat16 forward paths (csrc/README.md), batch 1: the AVX-512 BF16 dot
    products against float32 on widened inputs."""
    if not _cpu_extension.extension_available():
        pytest.skip(f"C++ CPU extension not built ({_cpu_extension._load_error})")
    ops = torch.ops.vita_clip_cpu
    if path == "avx512bf16" and not ops.set_bf16_dot(True):
        pytest.skip("this CPU has no AVX-512 BF16")
    backend("cpp")
    x = {name: t.detach().to(torch.bfloat16) for name, t in inputs(1).items()}
    try:
        ops.set_bf16_dot(path == "avx512bf16")

        def fn():
            with torch.no_grad():
                return prompt_attention(**x)

        group = f"prompt_attention CPU B/16 1x{FRAMES} frames bf16 forward"
        out = measure(group, path, fn, rounds=20)
    finally:
        ops.set_bf16_dot(True)
    assert torch.isfinite(out).all()
    report_ratio(group, "avx512bf16", "widened")


BWD_WARMUP, BWD_ROUNDS = 2, 20


def test_prompt_attention_cpu_bf16_backward(once, backend):
    """The C++ kernel's two bfloat16 backward paths (csrc/README.md), batch 1, through the op's
    autograd on one forward's graph: the AVX-512 BF16 dot products against float32 on widened
    inputs, in alternating order round by round, so that the machine's load falls on both alike."""
    if not _cpu_extension.extension_available():
        pytest.skip(f"C++ CPU extension not built ({_cpu_extension._load_error})")
    ops = torch.ops.vita_clip_cpu
    if not ops.set_bf16_dot(True):
        pytest.skip("this CPU has no AVX-512 BF16")
    backend("cpp")
    x = {name: t.detach().to(torch.bfloat16).requires_grad_(True) for name, t in inputs(1).items()}
    grad = torch.randn(FRAMES, HEADS, TOKENS, DIM, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    out = prompt_attention(**x)
    paths = ["avx512bf16", "widened"]

    def rounds():
        times = {path: [] for path in paths}
        try:
            for r in range(BWD_WARMUP + BWD_ROUNDS):
                for path in paths if r % 2 == 0 else paths[::-1]:
                    ops.set_bf16_dot(path == "avx512bf16")
                    calls = ops.bf16_dot_calls()[1]
                    start = time.perf_counter()
                    grads = torch.autograd.grad(out, list(x.values()), grad, retain_graph=True)
                    elapsed = time.perf_counter() - start
                    assert ops.bf16_dot_calls()[1] - calls == (path == "avx512bf16")  # the path asked for ran
                    assert all(torch.isfinite(g).all() for g in grads)
                    if r >= BWD_WARMUP:
                        times[path].append(elapsed)
        finally:
            ops.set_bf16_dot(True)
        return times

    group = f"prompt_attention CPU B/16 1x{FRAMES} frames bf16 backward"
    times = once(group, rounds)
    for path, values in times.items():
        record(group, path, "time", statistics.median(values), "s", values=values)
    report_ratio(group, "avx512bf16", "widened")
    paired = sorted(a / b for a, b in zip(times["avx512bf16"], times["widened"]))
    add_section(f"Paired ratios, {group}", [f"- avx512bf16 / widened: median {statistics.median(paired):.2f}, "
                                            f"min-max {paired[0]:.2f}-{paired[-1]:.2f} over {len(paired)} rounds"])
