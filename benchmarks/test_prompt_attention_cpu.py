"""The prompt attention op on CPU: the C++ kernel (csrc/) against the composite, same run.

ViT-B/16 shapes: 8 frames per video, 12 heads, 197 tokens, head dim 64, 8 local and 8 global
prompts, 1 summary token; batch 1 (F = 8 frames) and batch 4 (F = 32). Both providers go
through ``vita_clip::prompt_attention`` with the CPU backend switch, forward alone and
forward + backward (autograd, gradients of all nine inputs). The ratio cpp / composite of the
median times is reported at the end.
"""
from __future__ import annotations

import pytest
import torch

from recording import report_ratio
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
