"""Memory of a training step: the tensors autograd saves for the backward, eager vs fused.

One forward of the video encoder in training mode under
``torch.autograd.graph.saved_tensors_hooks``; every saved tensor is attributed to its
storage, and each storage is counted once with its full size (views of one buffer, e.g.
q/k/v of the packed qkv projection, cost one buffer). Storages that belong to parameters
(frozen or trainable, and their views such as ``weight.t()``) are reported separately and
are *not* part of the "activations" figure: they exist whether or not a step runs.

The text side is left out (it is the same for both and is computed once per optimizer step).
The sources that dominate are listed per provider (the project line that called the op
which saved the tensor), written to the results as a section of ``latest.md``.

ViT-B/16 at 8x224x224, batch 1 runs on the CPU by default (one forward each, seconds);
``VITA_BENCH_B16=0`` leaves it out. On CUDA the peak of ``torch.cuda.max_memory_allocated``
over a forward + backward is measured too.
"""
from __future__ import annotations

import linecache
import os
import sys
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from recording import add_section, record, report_ratio
from vita_clip import create_model

CASES = [("tiny-16 2x4x32px", "vita-clip-tiny", 4, 2)]
if os.environ.get("VITA_BENCH_B16", "1") != "0":
    CASES.append(("B/16 1x8x224px", "vita-clip-b16", 8, 1))
PROVIDERS = ["vita-eager", "vita-fused"]
MB = 2**20
_PROJECT_DIRS = tuple(str(Path(p).resolve()) for p in (
    Path(__file__).parents[1] / "vita_clip", Path(__file__).parents[1] / "kernels"))
_SUMMARY: dict[str, dict[str, list[str]]] = defaultdict(dict)


def _site() -> str:
    """``file:line code`` of the innermost project frame (vita_clip, its kernels, open_clip) and
    the torch function it called, for the op that is saving a tensor right now."""
    frame = sys._getframe(2)
    torch_fn = None
    while frame is not None:
        path = frame.f_code.co_filename
        if os.sep + "torch" + os.sep in path and torch_fn is None and "autograd" not in path:
            torch_fn = frame.f_code.co_name
        elif path.startswith(_PROJECT_DIRS) or os.sep + "open_clip" + os.sep in path:
            code = linecache.getline(path, frame.f_lineno).strip()
            code = code if len(code) <= 70 else code[:67] + "..."
            where = f"{Path(path).parent.name}/{Path(path).name}:{frame.f_lineno}"
            return f"`{where}` `{code}`" + (f" (via {torch_fn})" if torch_fn else "")
        frame = frame.f_back
    return "elsewhere"


class SavedTensors:
    """Unique storages saved for backward, split into parameters and activations."""

    def __init__(self, model: torch.nn.Module):
        self.params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        self.storages: dict[int, dict] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if storage.nbytes() and key not in self.storages:
            self.storages[key] = dict(nbytes=storage.nbytes(), param=key in self.params, site=_site(),
                                      shape=tuple(t.shape))
        return t

    def bytes(self, param: bool) -> int:
        return sum(s["nbytes"] for s in self.storages.values() if s["param"] == param)

    def top(self, n: int = 6) -> list[str]:
        by_site: dict[str, list] = defaultdict(lambda: [0, 0, None])
        for s in self.storages.values():
            if not s["param"]:
                entry = by_site[s["site"]]
                entry[0] += s["nbytes"]
                entry[1] += 1
                entry[2] = entry[2] or s["shape"]
        total = self.bytes(param=False)
        ranked = sorted(by_site.items(), key=lambda kv: -kv[1][0])[:n]
        return [f"{100 * b / total:4.1f}% ({b / MB:.2f} MiB in {k} tensors like {tuple(shape)}): {site}"
                for site, (b, k, shape) in ranked]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("label, name, frames, batch", CASES, ids=[c[0] for c in CASES])
def test_saved_tensors(once, label, name, frames, batch, provider):
    torch.manual_seed(0)
    model = create_model(name, ["a", "b"], pretrained=None, num_frames=frames, fused=provider == "vita-fused",
                         quick_gelu=True)  # the activation of OpenAI's CLIP weights (it saves two tensors)
    encoder = model.visual.train()
    size = model.image_size[0]
    video = torch.randn(batch, frames, 3, size, size)
    log = SavedTensors(encoder)

    def forward():
        with torch.autograd.graph.saved_tensors_hooks(log.pack, lambda t: t):
            return encoder(video)

    out = once(f"saved tensors {label}", forward)
    assert out.requires_grad
    group = f"saved for backward, {label}"
    record(group, provider, "activations", log.bytes(param=False) / MB, "MiB", note="unique storages")
    record(group, provider, "parameters", log.bytes(param=True) / MB, "MiB", note="saved params, not in activations")
    report_ratio(group, "vita-fused", "vita-eager", metric="activations", goal="<= 0.7")
    _SUMMARY[label][provider] = log.top()
    lines = []
    for prov, top in _SUMMARY[label].items():
        lines += [f"{prov}:", "", *[f"- {line}" for line in top], ""]
    add_section(f"Largest saved activations, {label} (share of the activations, site of the op that saved them)",
                lines)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("label, name, frames, batch", CASES, ids=[c[0] for c in CASES])
def test_cuda_peak_memory(once, label, name, frames, batch, provider):
    torch.manual_seed(0)
    model = create_model(name, ["a", "b"], pretrained=None, num_frames=frames, fused=provider == "vita-fused",
                         quick_gelu=True)
    encoder = model.visual.cuda().train()
    size = model.image_size[0]
    video = torch.randn(batch, frames, 3, size, size, device="cuda")

    def step():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        encoder(video).sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    peak = once(f"cuda peak {label}", step)
    group = f"CUDA peak memory fwd+bwd, {label}"
    record(group, provider, "peak allocated", peak / MB, "MiB", device="cuda", note="above the weights")
    report_ratio(group, "vita-fused", "vita-eager", metric="peak allocated", goal="<= 0.7")
