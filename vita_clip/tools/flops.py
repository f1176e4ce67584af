"""FLOP and MAC counts of the video encoders, measured and analytic.

* :func:`count_flops` runs a function under ``torch.utils.flop_counter.FlopCounterMode``.
  :func:`register_flop_formulas` first teaches the counter the ops it does not know:
  torch's CPU flash attention (``aten._scaled_dot_product_flash_attention_for_cpu`` and its
  backward, which eager attention on a CPU dispatches to) and the fused ops
  ``vita_clip::prompt_attention`` / ``vita_clip::summary_attention`` (and their backward ops).
  Without them the counter silently adds zero for those ops.
* :func:`encoder_flops` counts a named model's video encoder on *fake* CPU tensors
  (``FakeTensorMode``): shapes only, nothing allocated or computed, so ViT-B/16 costs a
  fraction of a second, and the ops dispatched are the CPU ones (on the ``meta`` device
  torch would pick its math attention instead, whose backward is counted differently).
* :func:`encoder_macs` is the closed-form count of the same encoder, term by term.

Convention (the one of ``FlopCounterMode`` and fvcore): only matrix products are counted,
i.e. convolutions, linear layers and the two products of every attention (QK^T and PV);
LayerNorm, softmax, GELU, additions and bias additions are not. One multiply-accumulate
(MAC) is two FLOPs: **FLOPs = 2 x MACs**. Papers often write "FLOPs" for MACs.

The counts cover the video encoder of one view (clip) up to the pooled video feature; the
text side is excluded (its class features are computed once and cached at inference), and
so is the classifier's ``E x C`` product (0.2 M MACs for 400 classes).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..models.registry import create_model, family_of

__all__ = ["FlopCount", "count_flops", "encoder_flops", "encoder_macs", "encoder_macs_of", "register_flop_formulas",
           "PAPER_GFLOPS"]

# What the Vita-CLIP paper reports for its B/16 8-frame model (per view); see PAPER_NOTE.
PAPER_GFLOPS = {("vita-clip-b16", 8): 97.0}
PAPER_NOTE = ("the paper's 97 GFLOPs (B/16, 8 frames, per view) cannot be reproduced from the released code: "
              "the frozen CLIP ViT-B/16 alone costs 140.5 GMACs (281 GFLOPs) on 8 frames, and Vita-CLIP only adds tokens")


# -- registration of the missing flop formulas ----------------------------------------------------


def _attention_macs(batch_heads: int, queries: int, keys: int, head_dim: int) -> int:
    """QK^T plus PV of softmax attention."""
    return 2 * batch_heads * queries * keys * head_dim


def _attention_backward_macs(batch_heads: int, queries: int, keys: int, head_dim: int) -> int:
    """Flash-attention backward as torch counts it: recompute QK^T, then dP, dV, dQ and dK (5 products)."""
    return 5 * batch_heads * queries * keys * head_dim


def _cpu_flash_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    *batch, queries, head_dim = query
    # QK^T over the query head dim, PV over the value head dim (equal in every model here)
    return 2 * math.prod(batch) * queries * key[-2] * (head_dim + value[-1])


def _cpu_flash_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    *batch, queries, head_dim = query
    return 2 * _attention_backward_macs(math.prod(batch), queries, key[-2], head_dim)


def _prompt_keys(k, k_local, k_global, k_summary) -> int:
    """Keys each query of prompt_attention sees: own tokens, local, global prompts, summary token."""
    return k[2] + (k_local[2] if k_local else 0) + (k_global[1] if k_global else 0) + (1 if k_summary else 0)


# The formulas take the ops' arguments as shapes (tensors) and values (ints); trailing
# arguments they do not need are accepted and ignored, so an added optional argument does not
# break counting.


def _prompt_attention_flop(q, k, v, k_local=None, v_local=None, k_global=None, v_global=None, k_summary=None,
                           v_summary=None, *rest, out_shape=None, **kwargs) -> int:
    frames, heads, queries, head_dim = q
    return 2 * _attention_macs(frames * heads, queries, _prompt_keys(k, k_local, k_global, k_summary), head_dim)


def _prompt_attention_backward_flop(grad_out, q, k, v, k_local=None, v_local=None, k_global=None, v_global=None,
                                    k_summary=None, v_summary=None, *rest, out_shape=None, **kwargs) -> int:
    frames, heads, queries, head_dim = q
    return 2 * _attention_backward_macs(frames * heads, queries, _prompt_keys(k, k_local, k_global, k_summary),
                                        head_dim)


def _summary_macs(c, args) -> tuple[int, int, int]:
    """(linear MACs, attention MACs, attention-backward MACs) of summary attention on ``c`` (B, T, D):
    q/k/v/out projections and MHSA over the T frames; ``heads`` is the first int argument."""
    videos, frames, width = c
    heads = next(a for a in args if isinstance(a, int) and not isinstance(a, bool))
    shape = (videos * heads, frames, frames, width // heads)
    return 4 * videos * frames * width * width, _attention_macs(*shape), _attention_backward_macs(*shape)


def _summary_attention_flop(c, *args, out_shape=None, **kwargs) -> int:
    linear, attention, _ = _summary_macs(c, args)
    return 2 * (linear + attention)


def _summary_attention_backward_flop(grad, c, *args, out_shape=None, **kwargs) -> int:
    # What the eager module costs under autograd: input and weight gradients of the four
    # projections (2x their forward) and the attention backward. Recomputation inside the op
    # (the CPU composite re-runs its forward) is an implementation cost and is not counted.
    linear, _, attention_backward = _summary_macs(c, args)
    return 2 * (2 * linear + attention_backward)


_FORMULAS = {
    ("aten", "_scaled_dot_product_flash_attention_for_cpu"): _cpu_flash_flop,
    ("aten", "_scaled_dot_product_flash_attention_for_cpu_backward"): _cpu_flash_backward_flop,
    ("vita_clip", "prompt_attention"): _prompt_attention_flop,
    ("vita_clip", "prompt_attention_backward"): _prompt_attention_backward_flop,
    ("vita_clip", "summary_attention"): _summary_attention_flop,
    ("vita_clip", "summary_attention_backward"): _summary_attention_backward_flop,
}


def _find_op(namespace: str, name: str):
    if namespace == "vita_clip":  # importing the kernels registers the custom ops
        for module in ("vita_clip.kernels.prompt_attention", "vita_clip.kernels.summary_attention"):
            with contextlib.suppress(ImportError):
                importlib.import_module(module)
    try:
        return getattr(getattr(torch.ops, namespace), name)
    except (AttributeError, RuntimeError):
        return None


def register_flop_formulas() -> list[str]:
    """Register the formulas above with ``torch.utils.flop_counter`` (idempotent).

    Ops that do not exist in this build are skipped, and a formula already registered (by
    torch itself or by an earlier call) is left alone. Returns the names of the ops that
    have a formula after the call. Counters created *before* the first call do not see the
    new formulas (``FlopCounterMode`` copies the registry when it is constructed).
    """
    from torch.utils.flop_counter import flop_registry, register_flop_formula

    known = []
    for (namespace, name), formula in _FORMULAS.items():
        op = _find_op(namespace, name)
        if op is None:
            continue
        if op not in flop_registry:
            register_flop_formula(op)(formula)
        known.append(f"{namespace}::{name}")
    return known


# -- measured counts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FlopCount:
    """FLOPs counted by ``FlopCounterMode``; ``by_op`` maps op names to FLOPs."""

    flops: int
    by_op: dict[str, int]

    @property
    def macs(self) -> int:
        return self.flops // 2


@contextlib.contextmanager
def _no_mha_fastpath():
    """``nn.MultiheadAttention`` in eval without autograd calls ``aten._native_multi_head_attention``,
    a fused kernel the counter has no formula for (it would count zero): count the regular path."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None:
        yield
        return
    previous = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(previous)


def count_flops(fn: Callable[[], object]) -> FlopCount:
    """FLOPs of ``fn()`` (forward, and backward if ``fn`` calls it), with the formulas above registered.

    Run it with autograd enabled: under ``torch.no_grad`` torch's module tracker (used by the
    counter) fails on modules called with parameters as inputs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    register_flop_formulas()
    with _no_mha_fastpath(), FlopCounterMode(display=False) as counter:
        fn()
    by_op = {str(op): n for op, n in counter.get_flop_counts().get("Global", {}).items()}
    return FlopCount(counter.get_total_flops(), by_op)


def _to_fake_cpu(module: nn.Module, fake_mode) -> nn.Module:
    """Replace the (meta) parameters and buffers of ``module`` by fake CPU tensors, in place."""
    memo: dict[int, torch.Tensor] = {}

    def fake(t: torch.Tensor) -> torch.Tensor:
        if id(t) not in memo:
            with fake_mode:
                new = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            memo[id(t)] = nn.Parameter(new, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else new
        return memo[id(t)]

    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is not None:
                sub._parameters[name] = fake(param)
        for name, buf in list(sub._buffers.items()):
            if buf is not None:
                sub._buffers[name] = fake(buf)
    return module


def encoder_flops(name: str, frames: int | None = None, batch: int = 1, *, fused: bool = False,
                  train: bool = False, **overrides) -> FlopCount:
    """Counted FLOPs of the video encoder of model ``name`` on a ``(batch, frames)`` clip.

    ``vita-clip*`` models count :class:`~vita_clip.models.vita_vision.VitaVisionTransformer`; ``vifi-clip*``
    models count their frame-wise CLIP image tower (= plain frozen CLIP). ``train=True`` adds
    the backward of ``output.sum()`` (gradients of the trainable parameters and of what
    leads to them). Runs on fake CPU tensors: nothing is allocated or computed.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    vita = family_of(name).architecture == "vita"  # the Vita-CLIP video encoder
    if vita:
        overrides["fused"] = fused
    if frames is not None:
        overrides["num_frames"] = frames
    model = create_model(name, ["a class"], device="meta", **overrides)
    frames = frames or model.num_frames
    encoder = model.visual if vita else model
    fake_mode = FakeTensorMode()
    _to_fake_cpu(encoder, fake_mode)
    encoder.train(train)
    size = model.image_size
    with fake_mode:
        video = torch.empty(batch, frames, 3, *size)

        def run():
            out = encoder(video) if vita else encoder.visual(video.flatten(0, 1))
            if train:
                out.sum().backward()

        return count_flops(run)


# -- analytic counts ------------------------------------------------------------------------------


def encoder_macs(width: int, layers: int, heads: int, mlp_ratio: float, patches: int, frames: int, *,
                 patch_size: int | tuple[int, int] = 16, channels: int = 3, output_dim: int = 512,
                 local_prompts: int | None = None, global_prompts: int = 8, summary: bool = True,
                 fused: bool = False, batch: int = 1) -> dict[str, int]:
    """Multiply-accumulates of the Vita-CLIP video encoder on ``batch`` clips of ``frames`` frames.

    ``local_prompts`` is T_l (default: ``frames``, one per frame; 0 = off), ``global_prompts``
    is M (0 = off), ``summary`` the summary token. With all three off this is the plain
    frame-wise CLIP image tower. Returns the MACs per term and their ``"total"``.

    Per layer and frame, with P patches, D width, D_m = mlp_ratio * D:

    * eager (the released code): attention over N = 1 + T_l + M + P + S tokens (S = 1 with
      the summary token): q/k/v ``N*D*3D``, QK^T and PV ``2*N^2*D``, output ``N*D^2``; the FFN
      sees 1 + M + P tokens: ``2*(1+M+P)*D*D_m``;
    * fused: only the 1 + P CLS and patch tokens get queries and the FFN; they attend to
      1 + P + T_l + M + S keys; prompts only get k/v projections (``2*D^2`` per token): the
      T_l local prompts once per clip, the M global ones once per layer (per batch), the
      summary token once per frame.

    Both add, per layer and clip, ``cls_proj`` (``T*D^2``, present with local prompts or the
    summary token) and the summary attention (``4*T*D^2 + 2*T^2*D``); and per frame the patch
    embedding (``P*D*channels*patch_h*patch_w``) and the output projection (``D*output_dim``).
    """
    if width % heads:
        raise ValueError(f"width {width} is not divisible by {heads} heads")
    ph, pw = (patch_size, patch_size) if isinstance(patch_size, int) else patch_size
    t_local = frames if local_prompts is None else local_prompts
    m, s, d = global_prompts, int(summary), width
    d_mlp = int(width * mlp_ratio)
    clips, f = batch, batch * frames
    terms = dict.fromkeys(("patch_embed", "cls_proj", "summary_attention", "qkv", "prompt_kv", "attention",
                           "out_proj", "mlp", "proj"), 0)
    terms["patch_embed"] = f * patches * d * channels * ph * pw
    terms["proj"] = f * d * output_dim
    if t_local or summary:
        terms["cls_proj"] = layers * clips * frames * d * d
    if summary:
        terms["summary_attention"] = layers * clips * (4 * frames * d * d + 2 * frames * frames * d)
    if fused:
        n = 1 + patches
        keys = n + t_local + m + s
        terms["qkv"] = layers * f * n * 3 * d * d
        terms["prompt_kv"] = layers * (clips * t_local + m + f * s) * 2 * d * d
        terms["attention"] = layers * f * 2 * n * keys * d
        terms["out_proj"] = layers * f * n * d * d
        terms["mlp"] = layers * f * 2 * n * d * d_mlp
    else:
        n, n_ffn = 1 + t_local + m + patches + s, 1 + m + patches
        terms["qkv"] = layers * f * n * 3 * d * d
        terms["attention"] = layers * f * 2 * n * n * d
        terms["out_proj"] = layers * f * n * d * d
        terms["mlp"] = layers * f * 2 * n_ffn * d * d_mlp
    terms["total"] = sum(terms.values())
    return terms


def encoder_macs_of(name: str, frames: int | None = None, batch: int = 1, *, fused: bool = False,
                    clip: bool = False, **overrides) -> dict[str, int]:
    """:func:`encoder_macs` with the shapes of model ``name`` (built on the meta device).

    ``clip=True`` gives the plain frozen CLIP image tower of the same backbone.
    """
    if frames is not None:
        overrides["num_frames"] = frames
    model = create_model(name, ["a class"], device="meta", **overrides)
    frames = frames or model.num_frames
    visual = model.visual
    block = visual.transformer.resblocks[0]
    width = visual.conv1.out_channels
    grid = [s // p for s, p in zip(model.image_size, visual.conv1.kernel_size)]
    shape = dict(width=width, layers=len(visual.transformer.resblocks), heads=block.attn.num_heads,
                 mlp_ratio=block.mlp.c_fc.out_features / width, patches=math.prod(grid), frames=frames,
                 patch_size=tuple(visual.conv1.kernel_size), channels=visual.conv1.in_channels,
                 output_dim=visual.proj.shape[1], batch=batch)
    if clip or model.architecture != "vita":
        return encoder_macs(**shape, local_prompts=0, global_prompts=0, summary=False)
    return encoder_macs(**shape, local_prompts=frames if visual.use_local_prompts else 0,
                        global_prompts=visual.num_global_prompts, summary=visual.use_summary_token, fused=fused)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vita_clip.tools.flops",
                                     description="GMACs of a model's video encoder per view, counted and analytic")
    parser.add_argument("models", nargs="*", default=["vita-clip-b16"], help="model names (default: vita-clip-b16)")
    parser.add_argument("--frames", type=int, nargs="*", default=[8], help="clip lengths (default: 8)")
    args = parser.parse_args(argv)
    print(f"{'model':<26} {'frames':>6} {'path':>6} {'counted GMACs':>14} {'analytic GMACs':>15}")
    for name in args.models:
        paths = ("eager", "fused") if family_of(name).architecture == "vita" else ("eager",)  # the analytic count is Vita-CLIP's
        for frames in args.frames:
            for path in paths:
                fused = path == "fused"
                counted = encoder_flops(name, frames, fused=fused).macs / 1e9
                analytic = encoder_macs_of(name, frames, fused=fused)["total"] / 1e9
                print(f"{name:<26} {frames:>6} {path:>6} {counted:>14.2f} {analytic:>15.2f}")


if __name__ == "__main__":
    main()
