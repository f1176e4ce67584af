"""``ViFiCLIP``: fine-tuned CLIP models are efficient video learners (CVPR 2023)."""
from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch
from torch import nn

from ..config_builder import replace
from .backbone import create_backbone, freeze, patch_tokens
from .classifier import VideoTextClassifier, check_classnames, check_video
from .config import ViFiCLIPConfig
from .prompt_learner import PromptLearner
from .text import TextEncoder, count_tokens


class ViFiCLIP(VideoTextClassifier):
    """ViFi-CLIP: each frame through the CLIP image tower, features averaged over time.

    Input clips are ``(B, T, 3, H, W)`` normalised pixels (any ``T``); output ``(B, n_cls)``.
    Text: the hand-written ``config.templates`` ("a photo of a {}.") through the text tower.

    ``config.finetune`` chooses what trains: ``both`` (ViFi-CLIP: every parameter but the
    token embedding, as the original never fine-tunes it), ``image``, ``text`` or ``none``.

    The "bridge and prompt" variant (``text_prompts``/``vision_prompts`` > 0, after a
    ViFi-CLIP fine-tuning) freezes the model and learns deep prompts: ``vision_prompts``
    tokens appended after the patches before ``ln_pre`` and replaced before each of the first
    ``vision_prompt_depth`` layers; a generic text context after the start token, replaced
    before each of the first ``text_prompt_depth`` text layers.
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
            init = config.text_prompt_init if count_tokens(config.text_prompt_init) == config.text_prompts else ""
            self.prompt_learner = PromptLearner(classnames, self.text.token_embedding, n_ctx=config.text_prompts,
                                                ctx_init=init, class_specific=False, position="end")
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

    def encode_frames(self, frames: torch.Tensor) -> torch.Tensor:
        """CLIP image features of ``(N, 3, H, W)`` frames, with the vision prompts if any."""
        visual = self.visual
        x = patch_tokens(visual, frames)
        prompts = self.vision_prompts
        if prompts is not None:
            x = torch.cat([x, prompts[0].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
        x = visual.ln_pre(x)
        for i, block in enumerate(visual.transformer.resblocks):
            if prompts is not None and 1 <= i < prompts.shape[0]:
                # deep prompts: this layer's own tokens replace the previous layer's outputs
                x = torch.cat([x[:, : -prompts.shape[1]], prompts[i].to(x.dtype).expand(x.shape[0], -1, -1)], dim=1)
            x = block(x)
        return visual.ln_post(x[:, 0]) @ visual.proj

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        b, t = check_video(video, self.image_size)
        return self.encode_frames(video.flatten(0, 1)).view(b, t, -1).mean(dim=1)

    def _encode_prompted_text(self) -> torch.Tensor:
        if self.prompt_learner is None:
            return self.text.encode_templates(self._classnames, self.config.templates)
        prompts = self.prompt_learner(self.text.token_embedding)
        return self.text(prompts, self.prompt_learner.tokenized_prompts, deep_prompts=self.text_prompts,
                         eot_end=self.prompt_learner.eot_end)

    def _set_prompted_classes(self, classnames: list[str]) -> None:
        if self.prompt_learner is not None:
            self.prompt_learner.set_classnames(classnames)


def _check_vit(visual: nn.Module) -> None:
    if not hasattr(visual, "conv1") or getattr(visual, "attn_pool", None) is not None \
            or getattr(visual, "pool_type", "tok") != "tok" or getattr(visual, "final_ln_after_pool", False):
        raise ValueError("ViFi-CLIP needs a plain CLIP ViT backbone (class-token pooling, ln_post before proj)")
