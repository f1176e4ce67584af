"""GPU benchmarks for ``make gpu-check`` (skipped without CUDA), bfloat16 autocast throughout.

* attention microbenchmark: the Triton prompt attention (own tokens + 8 local + 8 global
  prompts + summary key) against torch's SDPA over the concatenated sequence, ViT-B/16 heads
  (12 x 64), 8 frames, at 197 / 214 / 257 tokens, forward and forward + backward;
* inference: frozen CLIP image tower vs Vita-CLIP eager vs fused, ViT-B/16 8x224, batch 1 / 8 / 32
  (``VITA_GPU_BATCHES``), and the eager model under ``torch.compile``;
* training step (forward + backward + AdamW on the trainable parameters): eager vs fused,
  ViT-B/16 8x224, batch 8;
* summary attention microbenchmark: the fused op (LayerNorm and projections as cuBLAS GEMMs, the
  attention over the frames one Triton kernel) against the eager module, one ViT-B/16 layer
  (768 wide, 12 heads), 8 frames, batch 1 / 8 / 32, forward and forward + backward.

Times are CUDA-event medians after warm-up; ratios only between values of the same run.
"""
from __future__ import annotations

import os
import statistics

import pytest
import torch
import torch.nn.functional as F

from recording import record, report_ratio
from vita_clip import create_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
BATCHES = [int(b) for b in os.environ.get("VITA_GPU_BATCHES", "1,8,32").split(",")]
DTYPE = torch.bfloat16


def cuda_times(fn, rounds: int = 10, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(rounds):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return times


def time_forward_backward(once, group: str, ours: tuple, reference: tuple, grad: torch.Tensor) -> None:
    """Times ``ours`` and ``reference`` (``(name, fn)``, ``fn()`` gives an output to backpropagate
    ``grad`` from) forward only and forward + backward, records both and their ratios (goal <= 1)."""
    results = {}

    def run():
        for name, fn in (ours, reference):
            with torch.no_grad():
                results[(name, "forward")] = cuda_times(fn)
            results[(name, "forward+backward")] = cuda_times(lambda fn=fn: fn().backward(grad))

    once(group, run)
    for (name, metric), values in results.items():
        record(group, name, metric, statistics.median(values), "s", values=values, device="cuda")
    for metric in ("forward", "forward+backward"):
        report_ratio(group, ours[0], reference[0], metric=metric, goal="<= 1")


@pytest.mark.parametrize("tokens", [197, 214, 257])
def test_attention_vs_sdpa(once, tokens):
    from vita_clip.kernels import prompt_attention as pa

    frames, heads, dim, n_global = 8, 12, 64, 8
    g = torch.Generator(device="cuda").manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, device="cuda", dtype=DTYPE, generator=g).requires_grad_(True)

    t = dict(q=r(frames, heads, tokens, dim), k=r(frames, heads, tokens, dim), v=r(frames, heads, tokens, dim),
             k_local=r(1, heads, frames, dim), v_local=r(1, heads, frames, dim), k_global=r(heads, n_global, dim),
             v_global=r(heads, n_global, dim), k_summary=r(frames, heads, dim), v_summary=r(frames, heads, dim))
    grad = torch.randn(frames, heads, tokens, dim, device="cuda", dtype=DTYPE)

    def ours():
        return pa.prompt_attention(**t)

    def sdpa():
        keys = pa.concat_prompt_kv(t["k"], t["k_local"], t["k_global"], t["k_summary"])
        values = pa.concat_prompt_kv(t["v"], t["v_local"], t["v_global"], t["v_summary"])
        return F.scaled_dot_product_attention(t["q"], keys, values)

    group = f"attention b16 heads, 8 frames, {tokens} tokens, bf16, cuda"
    time_forward_backward(once, group, ("prompt-attention", ours), ("sdpa-concat", sdpa), grad)


_MODELS: dict = {}


def b16_models():
    if not _MODELS:
        for kind in ("clip", "eager", "fused"):
            torch.manual_seed(0)
            if kind == "clip":
                model = create_model("vifi-clip-b16", ["a", "b"], pretrained=None, num_frames=8, quick_gelu=True)
            else:
                model = create_model("vita-clip-b16", ["a", "b"], pretrained=None, num_frames=8,
                                     fused=kind == "fused", quick_gelu=True)
            _MODELS[kind] = model.cuda().eval()
    return _MODELS


@pytest.mark.parametrize("batch", BATCHES)
def test_inference_b16(once, batch):
    models = b16_models()
    video = torch.randn(batch, 8, 3, 224, 224, device="cuda")
    compiled = torch.compile(models["eager"].encode_video)
    calls = {"frozen-clip": lambda: models["clip"].visual(video.flatten(0, 1)),
             "vita-eager": lambda: models["eager"].encode_video(video),
             "vita-eager-compiled": lambda: compiled(video),
             "vita-fused": lambda: models["fused"].encode_video(video)}
    group = f"inference b16 {batch}x8x224px bf16 cuda"
    results = {}

    def run():
        with torch.inference_mode(), torch.autocast("cuda", dtype=DTYPE):
            for name, fn in calls.items():
                results[name] = cuda_times(fn, rounds=5 if batch >= 32 else 10)

    once(group, run)
    for name, values in results.items():
        record(group, name, "time", statistics.median(values), "s", values=values, device="cuda")
        record(group, name, "throughput", batch / statistics.median(values), "clips/s", device="cuda")
    report_ratio(group, "vita-fused", "vita-eager-compiled", metric="throughput", goal=">= 1.2")
    report_ratio(group, "vita-fused", "vita-eager", metric="throughput")
    report_ratio(group, "vita-fused", "frozen-clip", metric="throughput")


@pytest.mark.parametrize("batch", [8])
def test_training_step_b16(once, batch):
    group = f"training step b16 {batch}x8x224px bf16 cuda"
    video = torch.randn(batch, 8, 3, 224, 224, device="cuda")
    labels = torch.arange(batch, device="cuda") % 10
    classes = [f"class {i}" for i in range(10)]
    results = {}

    def run():
        for kind in ("vita-eager", "vita-fused"):
            torch.manual_seed(0)
            model = create_model("vita-clip-b16", classes, pretrained=None, num_frames=8, fused=kind == "vita-fused",
                                 quick_gelu=True).cuda().train()
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=1e-5)

            def step(model=model, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast("cuda", dtype=DTYPE):
                    loss = F.cross_entropy(model(video).float(), labels)
                loss.backward()
                optimizer.step()

            results[kind] = cuda_times(step, rounds=5, warmup=2)
            model = optimizer = step = None  # free the model before the next one is built
            torch.cuda.empty_cache()

    once(group, run)
    for name, values in results.items():
        record(group, name, "time", statistics.median(values), "s", values=values, device="cuda")
    report_ratio(group, "vita-eager", "vita-fused", goal=">= 1.3")


@pytest.mark.parametrize("batch", BATCHES)
def test_summary_attention_vs_eager(once, batch):
    from open_clip.transformer import LayerNorm

    from vita_clip.kernels.summary_attention import summary_attention
    from vita_clip.models.vita_vision import SummaryAttention

    frames, width, heads = 8, 768, 12
    torch.manual_seed(0)
    ln, attn = LayerNorm(width).cuda(), SummaryAttention(width, heads).cuda()
    c = torch.randn(batch, frames, width, device="cuda", requires_grad=True)
    grad = torch.randn(batch, frames, width, device="cuda", dtype=DTYPE)

    def ours():
        return summary_attention(c.to(DTYPE), ln.weight, ln.bias, attn.q_proj.weight, attn.q_proj.bias,
                                 attn.k_proj.weight, attn.k_proj.bias, attn.v_proj.weight, attn.v_proj.bias,
                                 attn.out_proj.weight, attn.out_proj.bias, heads, ln.eps)

    def eager():
        x = c.to(DTYPE)
        return x + attn(ln(x))

    group = f"summary attention b16 layer, {batch}x8 frames, bf16, cuda"
    with torch.autocast("cuda", dtype=DTYPE):
        time_forward_backward(once, group, ("summary-op", ours), ("eager-module", eager), grad)
