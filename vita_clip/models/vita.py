"""``VitaCLIP``: video and text adaptive CLIP via multimodal prompting (CVPR 2023)."""
from __future__ import annotations

from collections.abc import Sequence

import open_clip
import torch

from ..config_builder import replace
from .backbone import create_backbone, freeze
from .classifier import VideoTextClassifier, check_classnames, check_video
from .config import VitaCLIPConfig
from .prompt_learner import PromptLearner
from .text import TextEncoder
from .vita_vision import VitaVisionTransformer


class VitaCLIP(VideoTextClassifier):
    """Vita-CLIP: a frozen CLIP with learnable video (summary, local, global) and text prompts.

    Input clips are ``(B, T, 3, H, W)`` float tensors of pixels normalised with the CLIP
    mean/std (the released code takes ``(B, 3, T, H, W)``); the output is ``(B, n_cls)``
    logits. ``T`` may differ from ``config.num_frames``: the time embedding and local
    prompts are interpolated over time.

    Trainable: ``logit_scale``, ``visual.time_embed``, ``visual.global_prompts``, each
    layer's ``visual.prompt_layers.i.{cls_proj, summary_ln, summary_attn, local_prompts}``
    and ``prompt_learner.ctx``. Everything from CLIP is frozen. With
    ``config.train_cls_proj=False``, ``cls_proj`` stays frozen as in the released code.

    Example::

        model = VitaCLIP(VitaCLIPConfig(backbone="ViT-B-16", pretrained="openai"), classnames)
        logits = model(video)                                  # learned prompts
        model.set_classes(["surfing", "juggling"], "class_only")  # zero-shot
    """

    architecture = "vita"  # the family tag checkpoints record (see vita_clip.models.registry)

    def __init__(self, config: VitaCLIPConfig | None = None, classnames: Sequence[str] = (),
                 clip_model: open_clip.CLIP | None = None, **overrides):
        super().__init__()
        config = replace(config or VitaCLIPConfig(), **overrides)
        classnames = check_classnames(classnames)
        self.config = config
        # clip_model: an already built open_clip model to take the backbone from (weights included)
        backbone = clip_model or create_backbone(config.backbone, config.pretrained, config.quick_gelu)
        self.visual = VitaVisionTransformer(
            backbone.visual,
            num_frames=config.num_frames,
            use_summary_token=config.use_summary_token,
            use_local_prompts=config.use_local_prompts,
            use_global_prompts=config.use_global_prompts,
            num_global_prompts=config.num_global_prompts,
            fused=config.fused,
        )
        self.text = freeze(TextEncoder(backbone))
        if self.text.output_dim != self.visual.output_dim:
            raise ValueError(f"backbone {config.backbone!r}: text and image embeddings differ "
                             f"({self.text.output_dim} vs {self.visual.output_dim})")
        self.logit_scale = backbone.logit_scale
        self.logit_scale.requires_grad_(True)
        text = config.text
        self.prompt_learner = PromptLearner(
            classnames, self.text.token_embedding, n_ctx=text.n_ctx, ctx_init=text.ctx_init,
            class_specific=text.class_specific, position=text.position,
        )
        if self.visual.prompt_layers is not None and not config.train_cls_proj:
            for layer in self.visual.prompt_layers:
                freeze(layer.cls_proj)
        self._init_classes()
        self._classnames = classnames

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def image_size(self) -> tuple[int, int]:
        return self.visual.image_size

    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        check_video(video, self.image_size)
        return self.visual(video)

    def _encode_prompted_text(self) -> torch.Tensor:
        prompts = self.prompt_learner(self.text.token_embedding)
        return self.text(prompts, self.prompt_learner.tokenized_prompts, eot_end=self.prompt_learner.eot_end)

    def _set_prompted_classes(self, classnames: list[str]) -> None:
        learner = self.prompt_learner
        if learner.class_specific and classnames != learner.classnames:
            raise ValueError(
                f"this model learned class-specific text contexts for its {len(learner.classnames)} training "
                "classes; they cannot describe other classes. For new classes use hand-written prompts, "
                "e.g. model.set_classes(names, templates='class_only')"
            )
        learner.set_classnames(classnames)
