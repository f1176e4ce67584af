"""The Vita-CLIP video encoder: a frozen CLIP ViT with time embedding and three prompt types.

Eager reference of Vita-CLIP (CVPR 2023), equal to the released code. At layer ``i`` of
the frozen ViT, for every frame of a ``T``-frame clip:

1. ``global_prompts[i]`` (M learnable tokens, shared by all frames) are inserted after CLS;
2. the frame CLS tokens of the video are projected, ``c = cls_proj(CLS)`` (B, T, D), and give
   * the **summary token** of frame t: row t of ``c + MHSA(LN(c))``, an attention over the
     T frames of the video, and
   * the **local prompts**: ``local_prompts[t] + c[t]`` for all T frames, shown to every frame;
3. the frozen attention runs over ``[CLS, local(T), global(M), patches, summary]``;
4. the summary and local tokens are stripped before the frozen FFN; the global tokens go
   through the FFN and are stripped after the block.

The video feature is the mean over frames of ``ln_post(CLS) @ proj``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from open_clip.transformer import LayerNorm
from torch import nn

# vita_clip.kernels is the top-level kernels/ folder of the repository, installed under the package
# (setup.py's package_dir): the Triton kernels, the C++ CPU kernel and the eager references.
from ..kernels.prompt_attention import prompt_attention
from ..kernels.summary_attention import summary_attention
from ..precision import autocast_copy, autocast_linear
from .activations import frozen_mlp
from .backbone import freeze, patch_tokens


class SummaryAttention(nn.Module):
    """Multi-head self-attention over the frames of each video: ``(B, T, D) -> (B, T, D)``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by {heads} heads")
        self.heads = heads
        self.q_proj = nn.Linear(width, width)
        self.k_proj = nn.Linear(width, width)
        self.v_proj = nn.Linear(width, width)
        self.out_proj = nn.Linear(width, width)
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def heads(proj):
            return proj(x).view(b, t, self.heads, d // self.heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q_proj), heads(self.k_proj), heads(self.v_proj))
        return self.out_proj(out.transpose(1, 2).reshape(b, t, d))


class VitaLayerPrompts(nn.Module):
    """The learnable tokens one layer gets from its frames' CLS tokens: local prompts and
    summary tokens. ``forward(cls (B, T, D)) -> (local (B, T, D) | None, summary (B, T, D) | None)``."""

    def __init__(self, width: int, heads: int, num_frames: int, use_summary_token: bool,
                 use_local_prompts: bool, init_bound: float):
        super().__init__()
        self.cls_proj = nn.Linear(width, width)
        if use_summary_token:
            self.summary_ln = LayerNorm(width)
            self.summary_attn = SummaryAttention(width, heads)
        if use_local_prompts:
            self.local_prompts = nn.Parameter(torch.empty(num_frames, width))
            nn.init.uniform_(self.local_prompts, -init_bound, init_bound)
        self.use_summary_token = use_summary_token
        self.use_local_prompts = use_local_prompts

    def forward(self, cls_tokens: torch.Tensor, fused: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        c = self.cls_proj(cls_tokens)
        local = summary = None
        if self.use_local_prompts:
            local = resize_frames(self.local_prompts, c.shape[1]).to(c.dtype) + c
        if self.use_summary_token and fused:
            ln, sa = self.summary_ln, self.summary_attn
            # the projections' weights cast once under autocast where no gradient is taken (the
            # op would cast them in every call: 4 D^2 per layer for a few rows); LayerNorm's stay fp32
            projections = (autocast_copy(t) for proj in (sa.q_proj, sa.k_proj, sa.v_proj, sa.out_proj)
                           for t in (proj.weight, proj.bias))
            summary = summary_attention(c, ln.weight, ln.bias, *projections, sa.heads, ln.eps)
        elif self.use_summary_token:
            summary = c + self.summary_attn(self.summary_ln(c))
        return local, summary


def resize_frames(per_frame: torch.Tensor, num_frames: int) -> torch.Tensor:
    """``(T0, D)`` per-frame parameters -> ``(T, D)``, linearly interpolated over time.

    Lets a model trained on T0 frames run on clips of another length (the released code
    would reshape the CLS tokens with the training T and mix frames of different videos).
    """
    if per_frame.shape[0] == num_frames:
        return per_frame
    return F.interpolate(per_frame.t()[None], size=num_frames, mode="linear", align_corners=False)[0].t()


def add_prompt_tokens(x: torch.Tensor, local: torch.Tensor | None, summary: torch.Tensor | None) -> torch.Tensor:
    """``x`` (B*T, N, D) ``[CLS, rest]`` -> ``[CLS, local_1..local_T, rest, summary_t]``.

    Frame t of video b (row ``b*T + t``) sees all T local prompts of video b and its own
    summary token (row t of the video's summary attention).
    """
    parts = [x[:, :1]]
    if local is not None:
        b, t, d = local.shape
        parts.append(local[:, None].expand(b, t, t, d).reshape(b * t, t, d))
    parts.append(x[:, 1:])
    if summary is not None:
        parts.append(summary.reshape(-1, 1, summary.shape[-1]))
    return torch.cat(parts, dim=1)


def strip_prompt_tokens(x: torch.Tensor, num_local: int, has_summary: bool) -> torch.Tensor:
    """Inverse of :func:`add_prompt_tokens`: drop the local prompts and the summary token."""
    end = x.shape[1] - 1 if has_summary else x.shape[1]
    return torch.cat([x[:, :1], x[:, 1 + num_local : end]], dim=1)


def prompt_init_bound(patch_size: tuple[int, int], width: int) -> float:
    """VPT's uniform init bound for prompt tokens, sqrt(6 / (3 * p_h * p_w + D))."""
    return math.sqrt(6.0 / (3 * patch_size[0] * patch_size[1] + width))


class VitaVisionTransformer(nn.Module):
    """Frozen open_clip ViT plus Vita-CLIP's time embedding and prompts.

    The frozen modules keep their open_clip names (``conv1``, ``class_embedding``,
    ``positional_embedding``, ``ln_pre``, ``transformer.resblocks.i``, ``ln_post``, ``proj``)
    so that CLIP checkpoints load as they are. ``conv1`` gains a (zero, frozen) bias: the
    released Vita-CLIP checkpoints use EVL's patch embedding, which has one.

    ``fused=True`` computes the same function without building the prompt sequence (see
    :meth:`fused_layer`); parameters and state-dict keys are the same either way.
    """

    def __init__(self, clip_visual: nn.Module, num_frames: int, use_summary_token: bool = True,
                 use_local_prompts: bool = True, use_global_prompts: bool = True, num_global_prompts: int = 8,
                 fused: bool = False):
        super().__init__()
        _check_plain_vit(clip_visual)
        self.fused = fused
        conv = clip_visual.conv1
        width = conv.out_channels
        self.conv1 = nn.Conv2d(3, width, conv.kernel_size, conv.stride, bias=True,
                               device=conv.weight.device, dtype=conv.weight.dtype)
        self.conv1.weight = conv.weight
        nn.init.zeros_(self.conv1.bias)
        self.class_embedding = clip_visual.class_embedding
        self.positional_embedding = clip_visual.positional_embedding
        self.ln_pre = clip_visual.ln_pre
        self.transformer = clip_visual.transformer
        self.ln_post = clip_visual.ln_post
        self.proj = clip_visual.proj
        freeze(self)

        self.image_size = tuple(clip_visual.image_size)
        self.patch_size = tuple(conv.kernel_size)
        self.width = width
        self.heads = self.transformer.resblocks[0].attn.num_heads
        self.num_layers = len(self.transformer.resblocks)
        self.num_frames = num_frames
        bound = prompt_init_bound(self.patch_size, width)

        self.time_embed = nn.Parameter(torch.empty(num_frames, width))
        nn.init.normal_(self.time_embed, std=0.02)
        self.num_global_prompts = num_global_prompts if use_global_prompts else 0
        self.global_prompts = None
        if use_global_prompts:
            self.global_prompts = nn.Parameter(torch.empty(self.num_layers, num_global_prompts, width))
            nn.init.uniform_(self.global_prompts, -bound, bound)
        self.prompt_layers = None
        if use_summary_token or use_local_prompts:
            self.prompt_layers = nn.ModuleList(
                VitaLayerPrompts(width, self.heads, num_frames, use_summary_token, use_local_prompts, bound)
                for _ in range(self.num_layers)
            )
        self.use_summary_token = use_summary_token
        self.use_local_prompts = use_local_prompts

    @property
    def output_dim(self) -> int:
        return self.proj.shape[1]

    def embed_frames(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` -> tokens ``(B*T, 1+P, D)`` after ``ln_pre``, rows frame-major."""
        b, t = video.shape[:2]
        x = patch_tokens(self, video.flatten(0, 1))
        time = resize_frames(self.time_embed, t).to(x.dtype)
        x = (x.view(b, t, *x.shape[1:]) + time[None, :, None, :]).flatten(0, 1)
        return self.ln_pre(x)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """``(B, T, 3, H, W)`` normalised pixels -> video features ``(B, E)``."""
        b, t = video.shape[:2]
        x = self.embed_frames(video)
        layer = self.fused_layer if self.fused else self.layer
        for i, block in enumerate(self.transformer.resblocks):
            x = layer(i, block, x, b, t)
        cls = self.ln_post(x[:, 0]) @ self.proj
        return cls.view(b, t, -1).mean(dim=1)

    def layer(self, i: int, block: nn.Module, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """Frozen block ``i`` with this layer's prompts; ``x`` is ``(B*T, 1+P, D)``."""
        m = self.num_global_prompts
        if m:
            x = torch.cat([x[:, :1], self.global_prompts[i].to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], dim=1)
        local = summary = None
        if self.prompt_layers is not None:
            local, summary = self.prompt_layers[i](x[:, 0].view(b, t, -1))
        tokens = add_prompt_tokens(x, local, summary)
        tokens = tokens + block.ls_1(block.attention(block.ln_1(tokens)))
        x = strip_prompt_tokens(tokens, num_local=t if local is not None else 0, has_summary=summary is not None)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
        if m:
            x = torch.cat([x[:, :1], x[:, 1 + m :]], dim=1)
        return x


    def fused_layer(self, i: int, block: nn.Module, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        """The same layer as :meth:`layer` with the work the original throws away left out.

        Only CLS and patch tokens get queries and go through the FFN; the prompts only
        contribute keys and values, projected once per video (local), once per layer
        (global) and once per frame (summary), and no token sequence is concatenated.
        """
        f, n, d = x.shape
        attn = block.attn
        heads = attn.num_heads
        head_dim = d // heads
        # frozen weights through autocast_linear: cast once under autocast, not in every call
        in_weight, in_bias = autocast_copy(attn.in_proj_weight), autocast_copy(attn.in_proj_bias)
        qkv = autocast_linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(f, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (F, H, N, hd) each

        def prompt_kv(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            kv = F.linear(block.ln_1(tokens), in_weight[d:], in_bias[d:])
            kv = kv.unflatten(-1, (2, heads, head_dim))
            return kv.select(-3, 0), kv.select(-3, 1)  # (..., H, hd)

        k_local = v_local = k_global = v_global = k_summary = v_summary = None
        if self.prompt_layers is not None:
            local, summary = self.prompt_layers[i](x[:, 0].view(b, t, d), fused=True)
            if local is not None:
                k_local, v_local = (p.transpose(1, 2) for p in prompt_kv(local))  # (B, H, T, hd)
            if summary is not None:
                k_summary, v_summary = prompt_kv(summary.reshape(f, d))  # (F, H, hd)
        if self.global_prompts is not None:
            k_global, v_global = (p.transpose(0, 1) for p in prompt_kv(self.global_prompts[i].to(x.dtype)))  # (H, M, hd)
        out = prompt_attention(q, k, v, k_local, v_local, k_global, v_global, k_summary, v_summary)
        # a view, no copy: the op writes (F, H, N, hd) with the strides of a contiguous (F, N, H, hd)
        out = autocast_linear(out.transpose(1, 2).reshape(f, n, d), attn.out_proj.weight, attn.out_proj.bias)
        x = x + block.ls_1(out)
        return x + block.ls_2(frozen_mlp(block.mlp, block.ln_2(x)))


def _check_plain_vit(visual: nn.Module) -> None:
    problems = []
    if not hasattr(visual, "conv1") or not hasattr(visual, "transformer"):
        problems.append("not an open_clip VisionTransformer")
    else:
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            problems.append("pools without the class token")
        if not isinstance(getattr(visual, "patch_dropout", nn.Identity()), nn.Identity):
            problems.append("uses patch dropout (it would drop prompt tokens)")
        if getattr(visual, "final_ln_after_pool", False):
            problems.append("applies ln_post after pooling")
        if any(getattr(b.attn, "in_proj_weight", None) is None for b in visual.transformer.resblocks):
            problems.append("has attention without a packed q/k/v projection")
    if problems:
        raise ValueError(f"Vita-CLIP needs a plain CLIP ViT backbone: it {', '.join(problems)}")
