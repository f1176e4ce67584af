"""Inference time of the eager models against the frozen CLIP visual forward on the same frames.

Default shapes are tiny (seconds on 2 CPU cores). ``VITA_BENCH_B16=1`` adds ViT-B/16 at
8x224x224, batch 1, with random weights (each forward takes seconds on a CPU).
"""
from __future__ import annotations

import os

import pytest
import torch

from conftest import report_ratio
from vita_clip import create_model

CASES = [("vita-clip-tiny", 4, 2)]
if os.environ.get("VITA_BENCH_B16") == "1":
    CASES.append(("vita-clip-b16", 8, 1))


@pytest.mark.parametrize("name, frames, batch", CASES)
@pytest.mark.parametrize("provider", ["frozen-clip", "vita-eager", "vita-fused", "vifi"])
def test_inference(measure, name, frames, batch, provider):
    torch.manual_seed(0)
    classes = [f"class {i}" for i in range(400)]
    model = create_model(name, classes, pretrained=None, num_frames=frames, fused=provider == "vita-fused").eval()
    size = model.image_size[0]
    video = torch.randn(batch, frames, 3, size, size)
    group = f"{name} {batch}x{frames}x{size}px inference"
    vifi = create_model(name.replace("vita", "vifi"), classes, pretrained=None).eval()
    if provider == "frozen-clip":
        fn = lambda: vifi.visual(video.flatten(0, 1))  # noqa: E731
    elif provider.startswith("vita"):
        fn = lambda: model(video)  # noqa: E731
    else:
        fn = lambda: vifi(video)  # noqa: E731
    with torch.inference_mode():
        model.class_text_features()  # text features are cached in eval: time the video side
        vifi.class_text_features()
        out = measure(group, provider, fn, rounds=5 if size < 100 else 3)
    assert torch.isfinite(out).all()
    report_ratio(group, "vita-eager", "frozen-clip")
    report_ratio(group, "vita-fused", "frozen-clip")
    report_ratio(group, "vita-eager", "vita-fused")
    report_ratio(group, "vifi", "frozen-clip")
