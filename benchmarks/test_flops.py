"""MACs and FLOPs (FLOPs = 2 x MACs) of the video encoders, per view (one clip, batch 1).

Counted by ``torch.utils.flop_counter.FlopCounterMode`` on fake CPU tensors (nothing is
allocated or computed; see ``vita_clip.tools.flops``) and checked against the closed-form
``vita_clip.tools.flops.encoder_macs``. Only matrix products count (convolution, linear layers,
QK^T and PV); the text side is excluded (its features are cached at inference).
"""
from __future__ import annotations

import pytest

from recording import add_section, record, report_ratio
from vita_clip.tools.flops import PAPER_GFLOPS, PAPER_NOTE, encoder_flops, encoder_macs_of

CASES = [("vita-clip-b16", 8, "B/16 8x224px"), ("vita-clip-b16", 16, "B/16 16x224px"),
         ("vita-clip-tiny", 4, "tiny-16 4x32px")]
PROVIDERS = ["frozen-clip", "vita-eager", "vita-fused"]
_TERMS: dict[str, dict[str, int]] = {}


def _count(name, frames, provider, train=False):
    if provider == "frozen-clip":
        return encoder_flops(name.replace("vita", "vifi"), frames), encoder_macs_of(name, frames, clip=True)
    fused = provider == "vita-fused"
    return (encoder_flops(name, frames, fused=fused, train=train),
            None if train else encoder_macs_of(name, frames, fused=fused))


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("name, frames, label", CASES, ids=[c[2] for c in CASES])
def test_inference_flops(once, name, frames, label, provider):
    counted, analytic = once(f"flop count {label}", lambda: _count(name, frames, provider))
    assert counted.macs == analytic["total"], (counted.by_op, analytic)
    group = f"FLOPs per view, {label}"
    record(group, provider, "MACs", counted.macs / 1e9, "GMACs", note="counted = analytic")
    record(group, provider, "FLOPs", counted.flops / 1e9, "GFLOPs")
    report_ratio(group, "vita-fused", "vita-eager", metric="MACs", goal="<= 0.95")
    report_ratio(group, "vita-eager", "frozen-clip", metric="MACs")
    if provider == "vita-fused" and (name, frames) in PAPER_GFLOPS:
        record(group, "paper (reported)", "FLOPs", PAPER_GFLOPS[(name, frames)], "GFLOPs", note="not reproducible")
        add_section("Paper figure", [f"Vita-CLIP paper: {PAPER_GFLOPS[(name, frames)]:g} GFLOPs per view for "
                                     f"{label}; {PAPER_NOTE}."])
    if name == "vita-clip-b16" and frames == 8:
        _TERMS[provider] = analytic
        if len(_TERMS) == len(PROVIDERS):
            rows = ["| term (GMACs) | " + " | ".join(PROVIDERS) + " |", "| --- |" + " ---: |" * len(PROVIDERS)]
            for term in _TERMS["vita-eager"]:
                rows.append(f"| {term} | " + " | ".join(f"{_TERMS[p][term] / 1e9:.3f}" for p in PROVIDERS) + " |")
            add_section(f"Analytic MACs by term, {label}, one view", rows)


@pytest.mark.parametrize("provider", ["vita-eager", "vita-fused"])
@pytest.mark.parametrize("name, frames, label", CASES[::2], ids=[c[2] for c in CASES[::2]])
def test_training_flops(once, name, frames, label, provider):
    counted, _ = once(f"flop count train {label}", lambda: _count(name, frames, provider, train=True))
    group = f"training FLOPs (fwd+bwd) per clip, {label}"
    record(group, provider, "MACs", counted.macs / 1e9, "GMACs", note="counted")
    report_ratio(group, "vita-fused", "vita-eager", metric="MACs")
