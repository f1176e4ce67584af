"""What VitaCLIP and ViFiCLIP share: class names -> text features -> cosine logits."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .templates import resolve_templates
from .text import TextEncoder


class VideoTextClassifier(nn.Module):
    """Base class of the video models: classifies clips against a list of class names.

    The text side has two modes:

    * the model's own prompts (``templates=None``): learned CoOp context for Vita-CLIP,
      the training template / learned prompts for ViFi-CLIP;
    * hand-written ``templates`` (zero-shot): any class names, embedded by the text tower.

    In eval mode the text features are cached and recomputed only when the class names,
    the templates or any text-side parameter change (an optimizer step, a loaded state
    dict, a move to another device). So they are in training when no text-side parameter
    trains (ViFi-CLIP's "image" fine-tuning, zero-shot templates on the frozen tower): they
    are then a constant of every step, computed once.

    Subclasses set ``self.text`` (a :class:`TextEncoder`) and ``self.logit_scale`` and
    implement :meth:`encode_video` and :meth:`_encode_prompted_text`.
    """

    text: TextEncoder
    logit_scale: nn.Parameter

    def _init_classes(self) -> None:
        self._classnames: list[str] = []
        self._templates: tuple[str, ...] | None = None
        self._classes_version = 0
        self._text_cache: tuple | None = None

    # -- classes ---------------------------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        return list(self._classnames)

    @property
    def templates(self) -> tuple[str, ...] | None:
        """The hand-written templates in use, or ``None`` for the model's own prompts."""
        return self._templates

    def set_classes(self, classnames: Sequence[str], templates: str | Sequence[str] | None = None) -> None:
        """Classify against ``classnames`` from now on.

        Args:
            classnames: the class names, in label order.
            templates: ``None`` keeps the model's own (learned) prompts; a template set name
                (``"class_only"``, ``"a_photo_of"``, ``"video"``) or a list of strings with
                ``{}`` switches to zero-shot text features from the text tower.
        """
        classnames = check_classnames(classnames)
        if templates is None:
            self._set_prompted_classes(classnames)
            self._templates = None
        else:
            self._templates = resolve_templates(templates)
        self._classnames = classnames
        self._classes_version += 1
        self._text_cache = None

    def _set_prompted_classes(self, classnames: list[str]) -> None:
        raise NotImplementedError

    # -- text ------------------------------------------------------------------------------
    def encode_text(self) -> torch.Tensor:
        """Text features ``(n_cls, E)`` of the current classes (not normalised), with grad
        where a text-side parameter trains; from the cache when none does (the same values)."""
        if not torch.compiler.is_compiling() and not self._text_side_trains():
            return self._cached_text_features()
        return self._compute_text_features()

    def _compute_text_features(self) -> torch.Tensor:
        if self._templates is not None:
            return self.text.encode_templates(self._classnames, self._templates)
        return self._encode_prompted_text()

    def _encode_prompted_text(self) -> torch.Tensor:
        raise NotImplementedError

    def class_text_features(self) -> torch.Tensor:
        """:meth:`encode_text`, cached in eval mode (and whenever the text side is frozen)."""
        if torch.compiler.is_compiling() or (self.training and self._text_side_trains()):
            return self.encode_text()
        return self._cached_text_features()

    def _cached_text_features(self) -> torch.Tensor:
        key = self._text_cache_key()
        cache = self._text_cache
        # features made under inference_mode cannot enter autograd outside it: remake them
        stale = cache is None or cache[0] != key or (cache[1].is_inference() and not torch.is_inference_mode_enabled())
        if stale:
            with torch.no_grad():
                self._text_cache = (key, self._compute_text_features())
        return self._text_cache[1]

    def _text_side_trains(self) -> bool:
        return any(p.requires_grad for p in self._text_parameters())

    def _text_parameters(self) -> list[nn.Parameter]:
        params = list(self.text.parameters())
        for name in ("prompt_learner", "text_prompts"):
            part = getattr(self, name, None)
            if isinstance(part, nn.Module):
                params += list(part.parameters())
            elif isinstance(part, nn.Parameter):
                params.append(part)
        return params

    def _text_cache_key(self) -> tuple:
        autocast = torch.is_autocast_enabled(self.logit_scale.device.type)
        dtype = torch.get_autocast_dtype(self.logit_scale.device.type) if autocast else None
        # data_ptr catches moves and .data swaps; _version catches in-place updates
        # (inference tensors have no version counter, and cannot be updated in place)
        return (self._classes_version, autocast, dtype,
                tuple((p.data_ptr(), 0 if p.is_inference() else p._version) for p in self._text_parameters()))

    # -- video -----------------------------------------------------------------------------
    def encode_video(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def logits(self, video_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """``exp(logit_scale)`` times the cosine similarity, ``(B, n_cls)``."""
        video_features = F.normalize(video_features, dim=-1)
        text_features = F.normalize(text_features, dim=-1)
        return self.logit_scale.exp() * video_features @ text_features.t().to(video_features.dtype)

    def forward(self, video: torch.Tensor, text_features: torch.Tensor | None = None) -> torch.Tensor:
        """Logits ``(B, n_cls)`` of a batch of clips ``(B, T, 3, H, W)`` (normalised pixels).

        ``text_features`` (from :meth:`encode_text`) may be passed to share one text pass
        between several micro-batches.
        """
        video_features = self.encode_video(video)
        if text_features is None:
            text_features = self.class_text_features()
        return self.logits(video_features, text_features)


def check_classnames(classnames: Sequence[str]) -> list[str]:
    if isinstance(classnames, str):
        raise TypeError("classnames must be a list of strings, not one string")
    classnames = list(classnames)
    if not classnames:
        raise ValueError("the class list is empty: give at least one class name")
    bad = [c for c in classnames if not isinstance(c, str) or not c.strip()]
    if bad:
        raise ValueError(f"class names must be non-empty strings, got {bad[:5]!r}")
    return classnames


def check_video(video: torch.Tensor, image_size: tuple[int, int]) -> tuple[int, int]:
    """Check a ``(B, T, 3, H, W)`` clip batch and return ``(B, T)``."""
    if not isinstance(video, torch.Tensor):
        raise TypeError(f"video must be a tensor of shape (B, T, 3, H, W), got {type(video).__name__}")
    h, w = image_size
    if video.dim() != 5:
        hint = " (a single clip? add a batch dimension with video[None])" if video.dim() == 4 else ""
        raise ValueError(f"video must have shape (B, T, 3, {h}, {w}), got {tuple(video.shape)}{hint}")
    if video.shape[2] != 3:
        hint = " (channels before time? the layout is (B, T, C, H, W))" if video.shape[1] == 3 else ""
        raise ValueError(f"video must have 3 channels at dim 2 of (B, T, 3, {h}, {w}), got {tuple(video.shape)}{hint}")
    if tuple(video.shape[-2:]) != (h, w):
        raise ValueError(f"video frames must be {h}x{w} for this backbone, got {video.shape[-2]}x{video.shape[-1]} "
                         f"(shape {tuple(video.shape)}); resize/crop them in the data pipeline")
    if video.shape[0] == 0 or video.shape[1] == 0:
        raise ValueError(f"video batch is empty: shape {tuple(video.shape)}")
    if not video.is_floating_point():
        raise TypeError(f"video must be a float tensor of normalised pixels, got {video.dtype}")
    return video.shape[0], video.shape[1]
