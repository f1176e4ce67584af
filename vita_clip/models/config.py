"""Plain config dataclasses for the two model families.

A config is data: it round-trips through :func:`~vita_clip.config_builder.config_to_dict` /
:func:`~vita_clip.config_builder.build` (checkpoints, YAML files), which rejects unknown keys
and ill-typed values by name.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config_builder import build

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
FINETUNE_MODES = ("both", "image", "text", "none")


@dataclass
class TextPromptConfig:
    """CoOp context vectors of the Vita-CLIP text side.

    ``n_ctx`` learnable vectors are placed around each class name. ``class_specific`` (CSC)
    learns one context per class; it cannot transfer to unseen classes. A non-empty
    ``ctx_init`` (e.g. ``"a photo of a"``) initialises a *generic* context from those words'
    token embeddings and sets ``n_ctx`` to their token count, as the original code does.
    """

    n_ctx: int = 8
    ctx_init: str = ""
    class_specific: bool = True
    position: str = "end"

    def __post_init__(self):
        if self.position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(f"text.position must be one of {CLASS_TOKEN_POSITIONS}, got {self.position!r}")
        if not self.ctx_init and self.n_ctx < 1:
            raise ValueError(f"text.n_ctx must be >= 1 (or give text.ctx_init), got {self.n_ctx}")


@dataclass
class VitaCLIPConfig:
    """Vita-CLIP (CVPR 2023): frozen CLIP with summary tokens, local and global prompts.

    Attributes:
        backbone: open_clip ViT name (``"ViT-B-16"``, ``"ViT-L-14"``, ``"ViT-Tiny-16"``, ...).
        pretrained: open_clip tag (``"openai"``), path of a CLIP checkpoint, or ``None``.
        quick_gelu: MLP activation; ``None`` follows the pretrained tag.
        num_frames: frames per clip at training time (size of ``time_embed`` and of each
            layer's ``local_prompts``). Other clip lengths are interpolated, never mixed.
        use_summary_token / use_local_prompts / use_global_prompts: the three prompt types.
        num_global_prompts: M, global prompt tokens per layer.
        train_cls_proj: the released code leaves each layer's ``cls_proj`` frozen at its random
            init (a bug); ``True`` (default) trains it, ``False`` reproduces the release.
        text: the CoOp prompt learner.
        fused: use the fused prompt-attention kernels instead of the eager reference.
    """

    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    num_frames: int = 8
    use_summary_token: bool = True
    use_local_prompts: bool = True
    use_global_prompts: bool = True
    num_global_prompts: int = 8
    train_cls_proj: bool = True
    text: TextPromptConfig = field(default_factory=TextPromptConfig)
    fused: bool = False

    def __post_init__(self):
        if isinstance(self.text, dict):
            self.text = build(TextPromptConfig, self.text, prefix="text.")
        if self.num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.use_global_prompts and self.num_global_prompts < 1:
            raise ValueError(f"num_global_prompts must be >= 1 when global prompts are on, got {self.num_global_prompts}")


@dataclass
class ViFiCLIPConfig:
    """ViFi-CLIP (CVPR 2023): frame-wise CLIP, mean pooling over time, fine-tuned.

    Attributes:
        finetune: which tower trains: ``both`` (ViFi-CLIP), ``image`` (CLIP image-FT),
            ``text`` (CLIP text-FT) or ``none`` (frozen; used with prompts).
        templates: hand-written prompts, ``{}`` is the class name.
        vision_prompts / vision_prompt_depth: "bridge and prompt" deep visual prompts:
            tokens appended after the patches, replaced in the first ``depth`` layers.
        text_prompts / text_prompt_depth: deep language prompts after the start token.
        text_prompt_init: the original's rule: with ``text_prompts <= 4`` the context starts
            as the first ``text_prompts`` token embeddings of these words and any remaining
            words stay in the prompt as fixed tokens ("a photo of a {}." with 4 contexts);
            with more contexts (or ``""``) it is random and the words are not used.
        fp16_prompts: round the vision prompts and the deep text prompts to float16 at every
            forward, as the original's ``.half()`` does (it moves logits by ~1e-3; gradients
            pass unrounded). On by
            default when an original ViFi-CLIP checkpoint is loaded; ``False`` keeps them in
            the model's dtype.
        keep_underscores: fill class names into ``templates`` as they are, so ``brush_hair``
            keeps ``_`` as a token, as the original's fine-tuning and zero-shot prompts do (its
            prompt learner, like ours, turns ``_`` into a space). On by default when an
            original ViFi-CLIP checkpoint is loaded; ``False`` cleans names to ``brush hair``.
        fused: run the vision-prompt layers whose prompt outputs are discarded with the fused
            prompt attention (the prompts as keys/values only); see :class:`~vita_clip.ViFiCLIP`.
    """

    backbone: str = "ViT-B-16"
    pretrained: str | None = "openai"
    quick_gelu: bool | None = None
    num_frames: int = 16
    finetune: str = "both"
    templates: tuple[str, ...] = ("a photo of a {}.",)
    vision_prompts: int = 0
    vision_prompt_depth: int = 0
    text_prompts: int = 0
    text_prompt_depth: int = 0
    text_prompt_init: str = "a photo of a"
    fp16_prompts: bool = False
    keep_underscores: bool = False
    fused: bool = False

    def __post_init__(self):
        self.templates = tuple(self.templates)
        if self.finetune not in FINETUNE_MODES:
            raise ValueError(f"finetune must be one of {FINETUNE_MODES}, got {self.finetune!r}")
        for name in ("vision", "text"):
            n, depth = getattr(self, f"{name}_prompts"), getattr(self, f"{name}_prompt_depth")
            if n < 0 or depth < 0 or (n == 0) != (depth == 0):
                raise ValueError(f"{name}_prompts and {name}_prompt_depth must both be 0 or both positive, got {n} and {depth}")
        if self.text_prompts == 0 and self.vision_prompts > 0:
            raise ValueError("vision prompts need text prompts too (the bridge-and-prompt design prompts both towers)")
        if self.uses_prompts and self.finetune != "none":
            raise ValueError("with prompts only the prompts train: set finetune='none' (fine-tune first, then prompt)")
        if not self.templates or not all("{}" in t for t in self.templates):
            raise ValueError(f"templates must be a non-empty list of strings containing '{{}}', got {self.templates!r}")

    @property
    def uses_prompts(self) -> bool:
        return self.text_prompts > 0
