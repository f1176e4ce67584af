"""The fused Vita-CLIP encoder in bfloat16 on CPU against float32 plain CLIP (ViT-B/16, 8x224,
batch 1), timed in interleaved rounds (a drift of the machine's speed hits every provider alike).

Providers: ``clip-fp32`` (the frozen CLIP image tower on the 8 frames, float32), ``fused-fp32``,
``fused-bf16`` (CPU autocast, bfloat16; the prompt attention runs the C++ kernel, the fused
layers' frozen weights are cast once, ``precision.autocast_linear``), ``fused-bf16-recast`` (the
same with autocast casting every weight in every call, ``precision.set_cast_cache(False)``) and
``fused-bf16-composite`` (the same with torch's attention as the CPU prompt-attention backend),
with ``VITA_BENCH_FP16=1`` ``fused-fp16`` (CPU autocast, float16: one run on this AMD EPYC took
3.5x the time of float32 CLIP, so it is off by default). Random weights with QuickGELU (speed does not depend on
the weights); also records the top-1 agreement of fused bf16 with fused fp32 over the rounds'
clips against 400 random class embeddings. ``VITA_BENCH_B16=0`` leaves it out.
"""
from __future__ import annotations

import math
import os
import statistics
import time

import pytest
import torch

from recording import add_section, record, report_ratio
from vita_clip import create_model, kernels, precision
from vita_clip.kernels import _cpu_extension

ROUNDS = int(os.environ.get("VITA_BENCH_PRECISION_ROUNDS", "5"))
FP16 = os.environ.get("VITA_BENCH_FP16", "0") == "1"  # 3-4x slower than float32 on CPUs without fp16 math


@pytest.mark.skipif(os.environ.get("VITA_BENCH_B16", "1") == "0", reason="VITA_BENCH_B16=0")
def test_fused_bf16_vs_fp32_clip_b16_interleaved(once):
    torch.manual_seed(0)
    clip = create_model("vifi-clip-b16", ["a", "b"], pretrained=None, num_frames=8, quick_gelu=True).eval()
    torch.manual_seed(0)
    fused = create_model("vita-clip-b16", ["a", "b"], pretrained=None, num_frames=8, fused=True,
                         quick_gelu=True).eval()
    classes = torch.nn.functional.normalize(torch.randn(400, fused.encode_video(torch.zeros(1, 8, 3, 224, 224))
                                                        .shape[-1], generator=torch.Generator().manual_seed(3)), dim=-1)
    saved = _cpu_extension._backend

    def fused_in(dtype, backend="cpp", cast_once=True):
        def run(video):
            kernels.set_cpu_backend(backend)
            precision.set_cast_cache(cast_once)
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                return fused.encode_video(video).float()
        return run

    calls = {"clip-fp32": lambda video: clip.visual(video.flatten(0, 1)), "fused-fp32": fused_in(None),
             "fused-bf16": fused_in(torch.bfloat16), "fused-bf16-recast": fused_in(torch.bfloat16, cast_once=False),
             "fused-bf16-composite": fused_in(torch.bfloat16, "composite")}
    if FP16:
        calls["fused-fp16"] = fused_in(torch.float16)
    times = {name: [] for name in calls}
    agree = []

    def rounds():
        for round_ in range(ROUNDS + 1):  # the first round warms up
            video = torch.randn(1, 8, 3, 224, 224, generator=torch.Generator().manual_seed(round_))
            outs = {}
            for name, fn in calls.items():
                started = time.perf_counter()
                outs[name] = fn(video)
                if round_:
                    times[name].append(time.perf_counter() - started)
            assert torch.equal(outs["fused-bf16"], outs["fused-bf16-recast"])  # weights cast once: the same numbers
            top1 = {n: (torch.nn.functional.normalize(outs[n], dim=-1) @ classes.t()).argmax(-1)
                    for n in ("fused-fp32", "fused-bf16")}
            agree.append(bool((top1["fused-fp32"] == top1["fused-bf16"]).all()))

    try:
        with torch.inference_mode():
            once("precision b16 interleaved", rounds)
    finally:
        _cpu_extension._backend = saved
        precision.set_cast_cache(True)
    group = "inference b16 1x8x224px cpu by precision, interleaved rounds"
    for name, values in times.items():
        record(group, name, "time", statistics.median(values), "s", values=values)
    report_ratio(group, "fused-bf16", "clip-fp32", goal="<= 0.35")
    report_ratio(group, "fused-fp32", "clip-fp32", goal="<= 1.03")
    report_ratio(group, "fused-bf16", "fused-bf16-recast")
    report_ratio(group, "fused-bf16", "fused-bf16-composite")
    if FP16:
        report_ratio(group, "fused-fp16", "clip-fp32")
    add_section("top-1 agreement, fused bf16 vs fused fp32 (random weights, 400 random classes)",
                [f"{sum(agree)} of {len(agree)} clips agree"])
    assert all(len(v) == ROUNDS for v in times.values())


TRAIN_ROUNDS = int(os.environ.get("VITA_BENCH_PRECISION_TRAIN_ROUNDS", "4"))


@pytest.mark.skipif(os.environ.get("VITA_BENCH_B16", "1") == "0", reason="VITA_BENCH_B16=0")
def test_training_step_bf16_vs_fp32_b16_interleaved(once):
    """What ``--precision auto`` picks for training on a CPU with native bf16: one training step
    (forward, backward, AdamW on the prompts) of the fused Vita-CLIP ViT-B/16, 8x224, batch 2,
    in fp32 and under bf16 autocast, alternating in each round."""
    torch.manual_seed(0)
    model = create_model("vita-clip-b16", [f"class {i}" for i in range(10)], pretrained=None, num_frames=8,
                         fused=True, quick_gelu=True).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    labels = torch.tensor([1, 3])
    times = {"fused-fp32": [], "fused-bf16": []}
    losses = {name: [] for name in times}

    def step(name, video):
        with precision.autocast("cpu", "bf16" if name == "fused-bf16" else "fp32"):
            loss = torch.nn.functional.cross_entropy(model(video), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    def rounds():
        for round_ in range(TRAIN_ROUNDS + 1):  # the first round warms up
            video = torch.randn(2, 8, 3, 224, 224, generator=torch.Generator().manual_seed(round_))
            for name in (times if round_ % 2 else reversed(list(times))):
                started = time.perf_counter()
                losses[name].append(step(name, video))
                if round_:
                    times[name].append(time.perf_counter() - started)

    once("precision b16 training interleaved", rounds)
    group = "training step b16 2x8x224px cpu by precision, interleaved rounds"
    for name, values in times.items():
        record(group, name, "time", statistics.median(values), "s", values=values)
    report_ratio(group, "fused-bf16", "fused-fp32")
    assert all(len(v) == TRAIN_ROUNDS for v in times.values())
    assert all(map(math.isfinite, losses["fused-bf16"] + losses["fused-fp32"]))
