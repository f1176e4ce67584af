"""The model registry: one entry per model family, named presets, ``create_model`` / ``load_model``.

Adding a model family means adding one :class:`ModelFamily` to :data:`FAMILIES` (its config
and model classes, its data recipe, whether it has a fused path, what an original checkpoint
of it implies) and its presets to :data:`MODELS`; everything else (checkpoints, the trainer,
the CLIs, the FLOP counter) asks the registry.
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..checkpoints.io import covers_backbone, load_weights, looks_like_path
from ..checkpoints.original import vifi_config_overrides, vita_config_overrides
from ..checkpoints.reader import read_checkpoint
from ..config_builder import build, replace
from ..data.config import DataConfig
from .backbone import create_backbone, tag_quick_gelu
from .config import ViFiCLIPConfig, VitaCLIPConfig
from .vifi import ViFiCLIP
from .vita import VitaCLIP


@dataclass(frozen=True)
class ModelFamily:
    """What the package knows about one model family.

    Attributes:
        architecture: the tag this package's checkpoints record (the model class's ``architecture``).
        generic_name: the model name that takes any open_clip ViT through ``backbone=...``.
        config_cls, model_cls: the config dataclass and the ``nn.Module`` built from it.
        data_recipe: ``(num_frames, size) -> DataConfig``: the family's published sampling and transforms.
        supports_fused: whether the config has the ``fused`` switch (the fused prompt-attention kernels).
        original_kind: the :func:`~vita_clip.checkpoints.read_checkpoint` kind of its released checkpoints.
        implied_by_original: config fields a released checkpoint implies, from its
            :func:`~vita_clip.checkpoints.read_checkpoint` result (``None``: none).
        original_quick_gelu: the activation the released code computes, whatever the open_clip
            config of the backbone says (Vita-CLIP's towers and the OpenAI CLIP code ViFi-CLIP
            builds on hard-code QuickGELU).
    """

    architecture: str
    generic_name: str
    config_cls: type
    model_cls: type
    data_recipe: Callable[..., DataConfig]
    supports_fused: bool
    original_kind: str
    implied_by_original: Callable[[dict], dict] | None = None
    original_quick_gelu: bool = True


FAMILIES: dict[str, ModelFamily] = {
    "vita": ModelFamily("vita", "vita-clip", VitaCLIPConfig, VitaCLIP, DataConfig.vita_clip, supports_fused=True,
                        original_kind="original-vita",
                        implied_by_original=lambda loaded: vita_config_overrides(loaded["state_dict"])),
    "vifi": ModelFamily("vifi", "vifi-clip", ViFiCLIPConfig, ViFiCLIP, DataConfig.vifi_clip, supports_fused=True,
                        original_kind="original-vifi",
                        implied_by_original=lambda loaded: vifi_config_overrides(loaded["state_dict"],
                                                                                 loaded.get("original_config"))),
}

# name -> (family, preset fields). Presets follow the published settings.
MODELS: dict[str, tuple[str, dict]] = {
    "vita-clip": ("vita", {}),
    "vita-clip-b16": ("vita", dict(backbone="ViT-B-16", pretrained="openai")),
    "vita-clip-b32": ("vita", dict(backbone="ViT-B-32", pretrained="openai")),
    "vita-clip-l14": ("vita", dict(backbone="ViT-L-14", pretrained="openai")),
    "vita-clip-tiny": ("vita", dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4,
                                    num_global_prompts=3, text=dict(n_ctx=4))),
    "vifi-clip": ("vifi", {}),
    "vifi-clip-b16": ("vifi", dict(backbone="ViT-B-16", pretrained="openai", num_frames=16)),
    "vifi-clip-b16-prompting": ("vifi", dict(backbone="ViT-B-16", pretrained="openai", num_frames=32,
                                             finetune="none", vision_prompts=16, vision_prompt_depth=9,
                                             text_prompts=16, text_prompt_depth=9)),
    "vifi-clip-tiny": ("vifi", dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4)),
    "vifi-clip-tiny-prompting": ("vifi", dict(backbone="ViT-Tiny-16", pretrained=None, num_frames=4,
                                              finetune="none", vision_prompts=2, vision_prompt_depth=2,
                                              text_prompts=4, text_prompt_depth=2)),
}
_UNSET = object()


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`."""
    return sorted(MODELS)


def family_of(model_or_name: str | nn.Module) -> ModelFamily:
    """The :class:`ModelFamily` of a model name (``"vita-clip-b16"``) or of a built model."""
    if isinstance(model_or_name, str):
        if model_or_name not in MODELS:
            raise ValueError(f"unknown model {model_or_name!r}; known models: {', '.join(list_models())}")
        return FAMILIES[MODELS[model_or_name][0]]
    architecture = getattr(model_or_name, "architecture", None)
    if architecture not in FAMILIES:
        raise TypeError(f"expected a vita-clip model (VitaCLIP, ViFiCLIP), got {type(model_or_name).__name__}")
    return FAMILIES[architecture]


def data_recipe(model: nn.Module, frames: int | None = None) -> DataConfig:
    """The data recipe of the model's family at the model's resolution and clip length."""
    return family_of(model).data_recipe(num_frames=frames or model.config.num_frames, size=model.image_size[0])


def get_model_config(name: str, **overrides) -> VitaCLIPConfig | ViFiCLIPConfig:
    """The config of a named model with ``overrides`` applied (nested ones as dicts)."""
    config_cls = family_of(name).config_cls
    preset = MODELS[name][1]
    fields = _merge(preset, overrides)  # overrides win over the preset, nested ones key by key
    return replace(config_cls(), **fields) if fields else config_cls()


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
            sets frames, prompt types and text context; the ViFi-CLIP layout sets its prompt
            sizes, the original's float16 prompt rounding and class-name handling, and, from
            the training config the file stores, frames, prompt template and trained tower),
            or a state dict.
        device: where the model lives. ``"meta"`` builds it without allocating weights
            (for parameter counts); no weights are loaded then.
        **overrides: config fields (see :class:`VitaCLIPConfig` / :class:`ViFiCLIPConfig`),
            e.g. ``num_frames=16``, ``train_cls_proj=False``, ``text={"n_ctx": 16}``,
            ``fused=True``. They win over the preset and over what a checkpoint implies.

    Precedence: ``overrides`` > checkpoint-implied fields > named preset > config defaults.
    The activation is never left to chance: a vita-clip checkpoint records the one it computed
    (and its backbone's whole open_clip config, so no registered name is needed), and an
    original Vita-CLIP or ViFi-CLIP checkpoint always gets QuickGELU, the released code's
    (``quick_gelu=False`` with one is refused).
    """
    family = family_of(name)
    preset = MODELS[name][1]
    loaded = read_checkpoint(checkpoint) if checkpoint is not None else None
    implied: dict = {}
    backbone_config = None
    if loaded is not None:
        if loaded["kind"] == "vita-clip":
            if loaded["architecture"] != family.architecture:
                raise ValueError(f"{loaded['source']} holds a {loaded['architecture']} model, not a {name!r} model")
            implied = dict(loaded["config"])
            backbone_config = loaded.get("backbone_config")
            tag = implied.get("pretrained")
            if implied.get("quick_gelu") is None and isinstance(tag, str) and not looks_like_path(tag):
                # written before checkpoints recorded the activation: the tag decided it then
                implied["quick_gelu"] = tag_quick_gelu(implied.get("backbone", ""), tag)
        elif loaded["kind"].startswith("original-"):
            owner = next(f for f in FAMILIES.values() if f.original_kind == loaded["kind"])
            if owner is not family:
                raise ValueError(f"{loaded['source']} is an {loaded['kind']} checkpoint; "
                                 f"create a '{owner.generic_name}*' model")
            if family.implied_by_original is not None:
                implied = family.implied_by_original(loaded)
            implied["quick_gelu"] = family.original_quick_gelu
            if overrides.get("quick_gelu") not in (None, family.original_quick_gelu):
                raise ValueError(f"quick_gelu={overrides['quick_gelu']!r}: {loaded['source']} is an {loaded['kind']} "
                                 f"checkpoint, whose code computes quick_gelu={family.original_quick_gelu}")
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
    config = build(family.config_cls, fields)
    if backbone_config is not None and config.backbone != implied.get("backbone"):
        backbone_config = None  # another backbone asked for explicitly
    with torch.device("meta") if meta else contextlib.nullcontext(), _quiet_open_clip():
        clip = create_backbone(config.backbone, config.pretrained, config.quick_gelu, config=backbone_config)
        config.quick_gelu = clip.backbone_config["quick_gelu"]  # resolved: what the model computes
        model = family.model_cls(config, classnames, clip_model=clip)
    model.backbone_config = clip.backbone_config
    recipe = loaded.get("data") if loaded is not None else None
    model.data_config = build(DataConfig, recipe, prefix="data.") if recipe is not None else None
    if loaded is not None:
        load_weights(model, loaded)
    if device is not None and not meta:
        model = model.to(device)
    return model


def load_model(checkpoint: str | os.PathLike | dict, *, pretrained: str | None = _UNSET,
               device: str | torch.device | None = None) -> VitaCLIP | ViFiCLIP:
    """Rebuild a model saved with :func:`vita_clip.save_checkpoint` or
    :func:`vita_clip.save_pretrained` (a file, a folder, a training ``checkpoint-<step>``
    folder, or a Hugging Face Hub repo id): config, backbone, classes, templates, weights and
    the data recipe (``model.data_config``, ``None`` when the checkpoint has none). Nothing is
    read from the current directory or beside the checkpoint. ``pretrained`` overrides where
    the frozen CLIP weights of a trainable-only checkpoint come from (e.g. a local file on an
    offline machine)."""
    loaded = read_checkpoint(checkpoint)
    if loaded["kind"] != "vita-clip":
        raise ValueError(f"{loaded['source']} is not a vita-clip checkpoint (it is {loaded['kind']!r}); "
                         "use create_model(name, classnames, checkpoint=...) for other layouts")
    if loaded["architecture"] not in FAMILIES:
        raise ValueError(f"{loaded['source']} holds an unknown model family {loaded['architecture']!r} "
                         f"(known: {', '.join(FAMILIES)})")
    model = create_model(FAMILIES[loaded["architecture"]].generic_name, loaded["prompt_classnames"], checkpoint=loaded,
                         pretrained=pretrained, device=device)
    if loaded["templates"] is not None or loaded["classnames"] != loaded["prompt_classnames"]:
        model.set_classes(loaded["classnames"], loaded["templates"])
    return model


from_pretrained = load_model  # the Hugging Face style name: a folder or a Hub repo id


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
