"""``create_model``: named model configs, pretrained CLIP weights and checkpoints in one call."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence

import torch
from torch import nn

from .checkpoint import covers_backbone, load_weights, read_checkpoint
from .config import ViFiCLIPConfig, VitaCLIPConfig, from_dict, replace
from .convert import vita_config_overrides
from .vifi import ViFiCLIP
from .vita import VitaCLIP

# name -> (config class, preset fields). Presets follow the published settings.
_MODELS: dict[str, tuple[type, dict]] = {
    "vita-clip": (VitaCLIPConfig, {}),
    "vita-clip-b16": (VitaCLIPConfig, dict(backbone="ViT-B-16", pretrained="openai")),
    "vita-clip-b32": (VitaCLIPConfig, dict(backbone="ViT-B-32", pretrained="openai")),
    "vita-clip-l14": (VitaCLIPConfig, dict(backbone="ViT-L-14", pretrained="openai")),
    "vita-clip-tiny": (VitaCLIPConfig, dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4,
                                            num_global_prompts=3, text=dict(n_ctx=4))),
    "vifi-clip": (ViFiCLIPConfig, {}),
    "vifi-clip-b16": (ViFiCLIPConfig, dict(backbone="ViT-B-16", pretrained="openai", num_frames=16)),
    "vifi-clip-b16-prompting": (ViFiCLIPConfig, dict(backbone="ViT-B-16", pretrained="openai", num_frames=32,
                                                     finetune="none", vision_prompts=16, vision_prompt_depth=9,
                                                     text_prompts=16, text_prompt_depth=9)),
    "vifi-clip-tiny": (ViFiCLIPConfig, dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4)),
    "vifi-clip-tiny-prompting": (ViFiCLIPConfig, dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4,
                                                      finetune="none", vision_prompts=2, vision_prompt_depth=2,
                                                      text_prompts=4, text_prompt_depth=2)),
}
_UNSET = object()


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(_MODELS)


def get_model_config(name: str, **overrides) -> VitaCLIPConfig | ViFiCLIPConfig:
    """The config of a named model with ``overrides`` applied (nested ones as dicts)."""
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    config_cls, preset = _MODELS[name]
    return replace(config_cls(), **preset, **overrides) if preset or overrides else config_cls()


def create_model(
    name: str,
    classnames: Sequence[str],
    *,
    pretrained: str | None = _UNSET,
    checkpoint: str | os.PathLike | dict | None = None,
    device: str | torch.device | None = None,
    **overrides,
) -> VitaCLIP | ViFiCLIP:
    """Create a Vita-CLIP or ViFi-CLIP model.

    Args:
        name: a model name from :func:`list_models`, e.g. ``"vita-clip-b16"``,
            ``"vifi-clip-b16"`` or the tiny ``"vita-clip-tiny"``. ``"vita-clip"`` and
            ``"vifi-clip"`` take any open_clip ViT through ``backbone=...``.
        classnames: class names in label order.
        pretrained: CLIP backbone weights: an open_clip tag (``"openai"``) or a checkpoint
            file; default: the named model's (``"openai"``), or none when ``checkpoint``
            already holds the backbone.
        checkpoint: weights to load after building: a vita-clip checkpoint, an original
            Vita-CLIP or ViFi-CLIP checkpoint (converted on the fly; the Vita-CLIP layout also
            sets frames, prompt types and text context), or a state dict.
        device: where the model lives. ``"meta"`` builds it without allocating weights
            (for parameter counts); no weights are loaded then.
        **overrides: config fields (see :class:`VitaCLIPConfig` / :class:`ViFiCLIPConfig`),
            e.g. ``num_frames=16``, ``train_cls_proj=False``, ``text={"n_ctx": 16}``,
            ``fused=True``. They win over the preset and over what a checkpoint implies.

    Precedence: ``overrides`` > checkpoint-implied fields > named preset > config defaults.
    """
    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    config_cls, preset = _MODELS[name]
    loaded = read_checkpoint(checkpoint) if checkpoint is not None else None
    implied: dict = {}
    if loaded is not None:
        if loaded["kind"] == "vita-clip":
            wanted = "vita" if config_cls is VitaCLIPConfig else "vifi"
            if loaded["architecture"] != wanted:
                raise ValueError(f"{loaded['source']} holds a {loaded['architecture']} model, not a {name!r} model")
            implied = dict(loaded["config"])
        elif loaded["kind"] == "original-vita":
            if config_cls is not VitaCLIPConfig:
                raise ValueError(f"{loaded['source']} is an original Vita-CLIP checkpoint; create a 'vita-clip*' model")
            implied = vita_config_overrides(loaded["state_dict"])
        elif loaded["kind"] == "original-vifi" and config_cls is not ViFiCLIPConfig:
            raise ValueError(f"{loaded['source']} is an original ViFi-CLIP checkpoint; create a 'vifi-clip*' model")
        if pretrained is _UNSET and covers_backbone(loaded["state_dict"]):
            pretrained = None  # the checkpoint brings the backbone: skip loading CLIP twice
    fields = _merge(preset, implied, overrides)
    if pretrained is not _UNSET:
        fields["pretrained"] = pretrained
    meta = device is not None and torch.device(device).type == "meta"
    if meta:
        if loaded is not None:
            raise ValueError("device='meta' builds a model without weights; do not pass a checkpoint")
        fields["pretrained"] = None
    config = from_dict(config_cls, fields)
    model_cls = VitaCLIP if config_cls is VitaCLIPConfig else ViFiCLIP
    with torch.device("meta") if meta else contextlib.nullcontext(), _quiet_open_clip():
        model = model_cls(config, classnames)
    if loaded is not None:
        load_weights(model, loaded)
    if device is not None and not meta:
        model = model.to(device)
    return model


def load_model(checkpoint: str | os.PathLike | dict, *, pretrained: str | None = _UNSET,
               device: str | torch.device | None = None) -> VitaCLIP | ViFiCLIP:
    """Rebuild a model saved with :func:`vita_clip.save_checkpoint`: config, classes,
    templates and weights. ``pretrained`` overrides where the frozen CLIP weights of a
    trainable-only checkpoint come from (e.g. a local file on an offline machine)."""
    loaded = read_checkpoint(checkpoint)
    if loaded["kind"] != "vita-clip":
        raise ValueError(f"{loaded['source']} is not a vita-clip checkpoint (it is {loaded['kind']!r}); "
                         "use create_model(name, classnames, checkpoint=...) for other layouts")
    name = "vita-clip" if loaded["architecture"] == "vita" else "vifi-clip"
    model = create_model(name, loaded["prompt_classnames"], checkpoint=loaded, pretrained=pretrained, device=device)
    if loaded["templates"] is not None or loaded["classnames"] != loaded["prompt_classnames"]:
        model.set_classes(loaded["classnames"], loaded["templates"])
    return model


def _merge(*layers: dict) -> dict:
    out: dict = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = value
    return out


@contextlib.contextmanager
def _quiet_open_clip():
    """open_clip logs a warning for every model built without pretrained weights; a random
    backbone is deliberate here (tests, meta-device counts, weights from a checkpoint)."""
    root = logging.getLogger()
    previous = root.level
    root.setLevel(max(previous, logging.ERROR))
    try:
        yield
    finally:
        root.setLevel(previous)


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Total, trainable and frozen parameter counts (works on meta-device models)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable, "frozen": total - trainable}
