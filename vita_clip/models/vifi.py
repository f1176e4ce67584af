"""``ViFiCLIP``: fine-tuned CLIP models are efficient video learners (CVPR 2023)."""
from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from ..config_builder import replace
from ..kernels.prompt_attention import prompt_attention
from ..precision import autocast_copy, autocast_linear
from .activations import frozen_mlp
from .backbone import create_backbone, freeze, patch_tokens
from .classifier import VideoTextClassifier, check_classnames, check_video
from .config import ViFiCLIPConfig
from .prompt_learner import PromptLearner
from .text import TextEncoder, clean_classname, count_tokens, tokenize


class ViFiCLIP(VideoTextClassifier):
    """ViFi-CLIP: each frame through the CLIP image tower, features averaged over time.

    Input clips are ``(B, T, 3, H, W)`` normalised pixels (any ``T``); output ``(B, n_cls)``.
    Text: the hand-written ``config.templates`` ("a photo of a {}.") through the text tower;
    with one template the text features are the raw (unnormalised) tower outputs, as in the
    original, with several the mean of their normalised embeddings.

    ``config.finetune`` chooses what trains: ``both`` (ViFi-CLIP: every parameter but the
    token embedding, as the original never fine-tunes it), ``image``, ``text`` or ``none``.

    The "bridge and prompt" variant (``text_prompts``/``vision_prompts`` > 0, after a
    ViFi-CLIP fine-tuning) freezes the model and learns deep prompts: ``vision_prompts``
    tokens appended after the patches (after the positional embedding, so they have none)
    before ``ln_pre`` and replaced before each of the first ``vision_prompt_depth`` layers; a
    generic text context after the start token, replaced (again without positional
    embedding) before each of the first ``text_prompt_depth`` text layers. Equal to the
    original code (``tests/test_golden_vifi.py``), including its float16 rounding of the
    prompts (``config.fp16_prompts``) and its class-name handling (``config.keep_underscores``).

    Fused path (``config.fused``): unlike Vita-CLIP's prompts, ViFi-CLIP's vision prompts are
    ordinary tokens of the sequence: they get queries, go through the MLP and, in the layers
    after the last prompted one, their outputs are the next layer's prompt tokens. Only where
    those outputs are thrown away (every prompted layer but the last, and the last too when
    the prompts reach the final layer, whose only output is the class token) are the prompts
    keys/values and nothing else; and there they are the same for every frame. Those layers
    run the fused prompt attention with the prompts as its shared ("global") source, projected
    once per layer instead of once per frame; the other layers, and models without vision
    prompts, run the eager blocks.
    """

    architecture = "vifi"  # the family tag checkpoints record (see vita_clip.models.registry)

    def __init__(self, config: ViFiCLIPConfig | None = None, classnames: Sequence[str] = (),
                 clip_model: open_clip.CLIP | None = None, **overrides):
        super().__init__()
        config = replace(config or ViFiCLIPConfig(), **overrides)
        classnames = check_classnames(classnames)
        self.config = config
        # clip_model: an already built open_clip model to take the backbone from (weights included)
        backbone = clip_model or create_backbone(config.backbone, config.pretrained, config.quick_gelu)
        self.visual = backbone.visual
        self.text = TextEncoder(backbone)
        self.logit_scale = backbone.logit_scale
        _check_vit(self.visual)
        layers_v, layers_t = len(self.visual.transformer.resblocks), len(self.text.transformer.resblocks)
        if config.vision_prompt_depth > layers_v or config.text_prompt_depth > layers_t:
            raise ValueError(f"prompt depths ({config.vision_prompt_depth}, {config.text_prompt_depth}) exceed the "
                             f"backbone's layers ({layers_v} vision, {layers_t} text)")

        self.vision_prompts = None
        self.text_prompts = None
        self.prompt_learner = None
        if config.vision_prompts:
            width = self.visual.conv1.out_channels
            self.vision_prompts = nn.Parameter(torch.empty(config.vision_prompt_depth, config.vision_prompts, width))
            nn.init.normal_(self.vision_prompts, std=0.02)
        if config.text_prompts:
            # the original's rule: words initialise (the first n of their tokens) only for n <= 4
            init = config.text_prompt_init if config.text_prompts <= 4 else ""
            if init and count_tokens(init) < config.text_prompts:
                raise ValueError(f"text_prompt_init {init!r} has {count_tokens(init)} tokens, fewer than text_prompts="
                                 f"{config.text_prompts} (the original would overwrite class-name tokens with context "
                                 "vectors); give longer words or text_prompt_init=''")
            self.prompt_learner = PromptLearner(classnames, self.text.token_embedding, n_ctx=config.text_prompts,
                                                ctx_init=init, class_specific=False, position="end", partial_init=True)
            if config.text_prompt_depth > 1:
                self.text_prompts = nn.Parameter(
                    torch.empty(config.text_prompt_depth - 1, config.text_prompts, self.text.width))
                nn.init.normal_(self.text_prompts, std=0.02)
        self._set_trainable(config.finetune)
        self._init_classes()
        self._classnames = classnames

    def _set_trainable(self, finetune: str) -> None:
        freeze(self)
        if finetune in ("both", "image"):
            self.visual.requires_grad_(True)
        if finetune in ("both", "text"):
            self.text.requires_grad_(True)
        if finetune == "both":
            self.logit_scale.requires_grad_(True)
        self.text.token_embedding.requires_grad_(False)  # never fine-tuned in ViFi-CLIP
        for prompts in (self.vision_prompts, self.text_prompts):
            if prompts is not None:
                prompts.requires_grad_(True)
        if self.prompt_learner is not None:
            self.prompt_learner.requires_grad_(True)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.visual.image_size)

    def _prompt_values(self, prompts: torch.Tensor) -> torch.Tensor:
        """Learned prompt tokens as the forward uses them: rounded to float16 with ``fp16_prompts``.

        The rounding is forward-only: the gradient reaches the prompts unrounded. (The
        original's ``.half()`` rounds it to float16 too, which its apex loss scaling keeps
        from underflowing; without that scaling small prompt gradients would become 0.)
        """
        if not self.config.fp16_prompts:
            return prompts
        return prompts.detach().half().to(prompts.dtype) + (prompts - prompts.detach())

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image features of ``(N, 3, H, W)`` frames, with the vision prompts if any."""
        visual = self.visual
        x = patch_tokens(visual, frames)
        if self.vision_prompts is None:
            x = visual.ln_pre(x)
            for block in visual.transformer.resblocks:
                x = block(x)
            return visual.ln_post(x[:, 0]) @ visual.proj
        prompts = self._prompt_values(self.vision_prompts).to(x.dtype)
        depth, n = prompts.shape[:2]
        blocks = visual.transformer.resblocks
        # Layers before `fused_until` discard their prompt outputs (see the class docstring).
        fused_until = (depth if depth == len(blocks) else depth - 1) if self.config.fused else 0
        # ln_pre acts on each token, so the prompts can be normalised apart from the frames
        x, first = visual.ln_pre(x), visual.ln_pre(prompts[0])
        for i, block in enumerate(blocks):
            layer_prompts = first if i == 0 else prompts[i] if i < depth else None
            if i < fused_until:
                x = _fused_shared_prompt_block(block, x, layer_prompts)
                continue
            if i == fused_until or layer_prompts is not None:
                # deep prompts: this layer's own tokens replace the previous layer's outputs
                keep = x if i == fused_until else x[:, :-n]
                x = torch.cat([keep, layer_prompts.expand(x.shape[0], -1, -1)], dim=1)
            x = block(x)
        return visual.ln_post(x[:, 0]) @ visual.proj

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        b, t = check_video(video, self.image_size)
        return self.encode_frames(video.flatten(0, 1)).view(b, t, -1).mean(dim=1)

    def template_tokens(self) -> torch.Tensor:
        """Token ids of the model's own prompts, ``(n_templates, n_cls, 77)`` (``(1, n_cls, 77)``
        with the prompt learner): ``config.templates`` filled with the class names (kept as they
        are with ``keep_underscores``, else cleaned) or the learner's ``[ctx] name.`` prompts."""
        if self.prompt_learner is not None:
            return self.prompt_learner.tokenized_prompts.unsqueeze(0)
        names = self._classnames if self.config.keep_underscores else [clean_classname(c) for c in self._classnames]
        return torch.stack([tokenize([t.format(c) for c in names]) for t in self.config.templates])

    def _encode_prompted_text(self) -> torch.Tensor:
        if self.prompt_learner is None:
            tokens = self.template_tokens()
            if len(tokens) == 1:  # the original's single prompt: raw features
                return self.text.encode_tokens(tokens[0])
            return torch.stack([F.normalize(self.text.encode_tokens(t), dim=-1) for t in tokens]).mean(dim=0)
        prompts = self.prompt_learner(self.text.token_embedding)
        deep = None if self.text_prompts is None else self._prompt_values(self.text_prompts)
        return self.text(prompts, self.prompt_learner.tokenized_prompts, deep_prompts=deep,
                         eot_end=self.prompt_learner.eot_end)

    def _set_prompted_classes(self, classnames: list[str]) -> None:
        if self.prompt_learner is not None:
            self.prompt_learner.set_classnames(classnames)


def _fused_shared_prompt_block(block: nn.Module, x: torch.Tensor, prompts: torch.Tensor) -> torch.Tensor:
    """Block ``block`` on ``[x, prompts]`` (prompts the same for every frame), returning only the
    rows of ``x``: the prompts are keys/values of the fused prompt attention, nothing else."""
    f, n, d = x.shape
    attn = block.attn
    heads = attn.num_heads
    head_dim = d // heads
    in_weight, in_bias = autocast_copy(attn.in_proj_weight), autocast_copy(attn.in_proj_bias)  # cast once
    qkv = autocast_linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(f, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)  # (F, H, N, hd) each
    kv = F.linear(block.ln_1(prompts), in_weight[d:], in_bias[d:]).unflatten(-1, (2, heads, head_dim))
    k_prompts, v_prompts = (kv.select(-3, j).transpose(0, 1) for j in (0, 1))  # (H, n_prompts, hd)
    out = prompt_attention(q, k, v, None, None, k_prompts, v_prompts, None, None)
    # a view, no copy: the op writes (F, H, N, hd) with the strides of a contiguous (F, N, H, hd)
    x = x + block.ls_1(autocast_linear(out.transpose(1, 2).reshape(f, n, d), attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(frozen_mlp(block.mlp, block.ln_2(x)))


def _check_vit(visual: nn.Module) -> None:
    if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None \
            or getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
        raise ValueError("ViFi-CLIP needs a plain CLIP ViT backbone (class-token pooling, ln_post before proj)")
