"""The text side of a training step, full length vs causally truncated, and the K400 step.

Text side: forward + backward of the Vita-CLIP text side (CSC context of 8 tokens, the
learned context trains, the tower is frozen) over the 400 Kinetics-400 class names, with
the transformer on all 77 positions (``text.truncate = False``, what the original code
runs) vs on the prefix holding every end-of-text token. The two are timed in alternating
rounds, so a drift of the machine's speed hits both alike.

K400 step: 8 micro-batches of 16 videos (the original's per-GPU K400 schedule), ViT-B/16,
8x224x224, computed from components measured in the same run: one video's forward +
backward with given text features (batch 1, times 128; eager and fused in alternating
rounds) and the text side's forward + backward. The original's schedule recomputes the
full-length text side in every micro-batch and runs the eager video path (the original
code's computation); this project computes the (truncated) text side once per step
(``vita_clip.engine.step``). The optimizer step is left out (milliseconds).

Random weights (``pretrained=None``): the time does not depend on them. ViT-B/16 takes
about 10 minutes on a loaded 2-core CPU (the full-length text side alone about 1-3 minutes
a round and ~11 GB of memory); ``VITA_BENCH_B16=0`` leaves it out. The tiny config (40
classes) always runs, as a smoke test of the harness.
"""
from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from recording import record, report_ratio
from vita_clip import create_model
from vita_clip import precision as precisions
from vita_clip.models.text import BatchFirstSelfAttention

K400_CLASSES = Path(__file__).parents[1] / "vita_clip" / "resources" / "classes" / "k400_classes.txt"
MICRO_BATCHES, MICRO_BATCH = 8, 16  # the original's K400 schedule per GPU

CASES = [pytest.param("tiny", "vita-clip-tiny", 40, dict(num_frames=4), (1, 2), id="tiny-40-classes")]
if os.environ.get("VITA_BENCH_B16", "1") != "0":
    # rounds: (full-length text, video) after one warm-up of each
    CASES.append(pytest.param("B/16 8x224px", "vita-clip-b16", 400, dict(pretrained=None, num_frames=8), (2, 5),
                              id="b16-400-classes"))


def k400_classnames(n: int) -> list[str]:
    names = [line.strip() for line in K400_CLASSES.read_text().splitlines() if line.strip()]
    return names[:n]


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("label, name, n_classes, options, rounds", CASES)
def test_text_side_and_k400_step(once, label, name, n_classes, options, rounds):
    full_rounds, video_rounds = rounds
    classes = k400_classnames(n_classes)
    torch.manual_seed(0)
    eager = create_model(name, classes, text=dict(n_ctx=8, class_specific=True), quick_gelu=True, **options).train()
    torch.manual_seed(0)
    fused = create_model(name, classes, text=dict(n_ctx=8, class_specific=True), quick_gelu=True, fused=True,
                         **options).train()
    text_out = torch.randn(len(classes), eager.text.output_dim, generator=torch.Generator().manual_seed(1))
    results: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def text_side(truncate: bool):
        eager.text.truncate = truncate
        eager.zero_grad(set_to_none=True)
        features = eager.encode_text()
        features.backward(text_out)
        results[truncate] = (features.detach(), eager.prompt_learner.ctx.grad.clone())

    size, frames = eager.image_size[0], eager.num_frames
    video = torch.randn(1, frames, 3, size, size, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3])
    with torch.no_grad():
        given_text = eager.encode_text()

    def video_side(model):
        text_leaf = given_text.detach().requires_grad_(True)  # as engine.step gives it
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(video, text_features=text_leaf), labels).backward()

    times: dict[str, list[float]] = {"full length": [], "truncated": [], "eager": [], "fused": []}

    def run():
        text_side(True)  # warm-up
        for _ in range(full_rounds):
            times["full length"].append(timed(lambda: text_side(False)))
            times["truncated"].append(timed(lambda: text_side(True)))
        times["truncated"].append(timed(lambda: text_side(True)))
        video_side(eager), video_side(fused)  # warm-up
        for _ in range(video_rounds):
            times["eager"].append(timed(lambda: video_side(eager)))
            times["fused"].append(timed(lambda: video_side(fused)))

    once(f"text side {label}", run)
    # the same function: values and gradients of the two text paths agree (float32)
    assert rel_err(results[True][0], results[False][0]) <= 1e-5
    assert rel_err(results[True][1], results[False][1]) <= 1e-4
    length = eager.text.sequence_length(eager.prompt_learner.tokenized_prompts)
    assert length < eager.text.context_length

    goals = name != "vita-clip-tiny"  # the goals are for B/16; the tiny case checks the harness
    text_group = f"text side fwd+bwd {label}, {len(classes)} K400 classes, CSC 8 ctx"
    for provider in ("full length", "truncated"):
        record(text_group, provider, "time", statistics.median(times[provider]), "s", values=times[provider],
               note=f"{eager.text.context_length if provider == 'full length' else length} positions")
    report_ratio(text_group, "truncated", "full length", goal="<= 0.3" if goals else "")

    video_group = f"video fwd+bwd {label} batch 1, given text features"
    for provider in ("eager", "fused"):
        record(video_group, provider, "time", statistics.median(times[provider]), "s", values=times[provider])
    report_ratio(video_group, "fused", "eager")

    text_full, text_short = (statistics.median(times[p]) for p in ("full length", "truncated"))
    video = {p: statistics.median(times[p]) for p in ("eager", "fused")}
    videos = MICRO_BATCHES * MICRO_BATCH
    step_group = f"K400 step {label}, {MICRO_BATCHES}x{MICRO_BATCH} videos, {len(classes)} classes"
    note = "from the component medians of this run"
    steps = {
        "original schedule": MICRO_BATCHES * (MICRO_BATCH * video["eager"] + text_full),
        "eager, text once, full length": videos * video["eager"] + text_full,
        "fused, text once, full length": videos * video["fused"] + text_full,
        "eager, text once, truncated": videos * video["eager"] + text_short,
        "fused, text once, truncated": videos * video["fused"] + text_short,
    }
    for provider, seconds in steps.items():
        record(step_group, provider, "time", seconds, "s", note=note)
    report_ratio(step_group, "original schedule", "fused, text once, truncated", goal=">= 2.0" if goals else "")
    report_ratio(step_group, "original schedule", "eager, text once, truncated")
    report_ratio(step_group, "original schedule", "fused, text once, full length")
    report_ratio(step_group, "fused, text once, full length", "fused, text once, truncated")


ATTENTION_ROUNDS = int(os.environ.get("VITA_BENCH_TEXT_ATTENTION_ROUNDS", "3"))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("label, name, n_classes, options, rounds", CASES)
def test_text_side_attention_class(once, label, name, n_classes, options, rounds, precision):
    """The truncated text side's forward + backward with the blocks' self-attention as
    ``BatchFirstSelfAttention`` (what TextEncoder uses: the input projection on the contiguous
    batch-first rows) and as plain ``nn.MultiheadAttention`` (projects the transposed view:
    a batched GEMM over copied weights when the prompts train), alternating in each round."""
    torch.manual_seed(0)
    model = create_model(name, k400_classnames(n_classes), text=dict(n_ctx=8, class_specific=True), **options).train()
    attentions = [block.attn for block in model.text.transformer.resblocks]
    kinds = {"BatchFirstSelfAttention": BatchFirstSelfAttention, "nn.MultiheadAttention": nn.MultiheadAttention}
    times = {kind: [] for kind in kinds}
    features = {}

    def text_side(kind):
        for attention in attentions:
            attention.__class__ = kinds[kind]
        model.zero_grad(set_to_none=True)
        with precisions.autocast("cpu", precision):
            out = model.encode_text()
        out.float().sum().backward()
        features[kind] = out.detach().float()

    def run():
        for round_ in range(ATTENTION_ROUNDS + 1):  # the first round warms up
            for kind in (kinds if round_ % 2 else reversed(list(kinds))):
                seconds = timed(lambda kind=kind: text_side(kind))
                if round_:
                    times[kind].append(seconds)
        text_side("BatchFirstSelfAttention")

    once(f"text attention {label} {precision}", run)
    assert rel_err(features["BatchFirstSelfAttention"], features["nn.MultiheadAttention"]) <= (
        1e-5 if precision == "fp32" else 2e-2)
    group = f"text side fwd+bwd {label}, {n_classes} K400 classes, CSC 8 ctx, truncated, {precision}, attention class"
    for kind, values in times.items():
        record(group, kind, "time", statistics.median(values), "s", values=values)
    report_ratio(group, "BatchFirstSelfAttention", "nn.MultiheadAttention")
