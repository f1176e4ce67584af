"""Frozen CLIP backbones from open_clip: names, tiny test configs and weight loading.

Any open_clip ViT with the standard CLIP text tower can serve as the backbone
(``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, their ``-quickgelu`` forms, ...). Weights come
from an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) or from a local
file holding an OpenAI (TorchScript or state dict) or open_clip checkpoint. Nothing is
downloaded when the weights are already in the Hugging Face cache; when they are not and
the machine is offline, :class:`PretrainedWeightsUnavailable` says how to supply a file.

A backbone is an open_clip config name, or the path of an open_clip-style model config JSON
(``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}``) for a ViT open_clip does not
ship: no ``open_clip.add_model_config`` is needed. Such a file must state
``vision_cfg.head_width`` and ``text_cfg.heads``: the weights do not reveal the head count,
and open_clip's defaults (64, 8) would silently split the attention differently.
:func:`resolved_backbone_config` is the complete config (every field explicit, the activation
resolved) that checkpoints carry, so they rebuild the same function without the file.

Two tiny configs for tests and the demo are registered with open_clip on import:
``ViT-Tiny-16`` (32 px, patch 16, width 64, 3 layers, 4 heads; the golden test config) and
``ViT-Tiny-8`` (64 px, patch 8, width 96, 3 layers, 3 heads).
"""
from __future__ import annotations

import dataclasses
import json
import os
import socket
import warnings
import zipfile
from functools import lru_cache
from pathlib import Path

import open_clip
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, resize_pos_embed

from ..checkpoints.io import load_state_dict_checked, looks_like_path, strip_prefix, unwrap_state_dict
from ..errors import PretrainedWeightsUnavailable

_TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_TINY_CONFIG_DIR)

TINY_BACKBONES = tuple(sorted(p.stem for p in _TINY_CONFIG_DIR.glob("*.json")))


def list_backbones() -> list[str]:
    """Names of the open_clip configs that can serve as a backbone (plain ViTs, CLIP text tower)."""
    return [name for name in open_clip.list_models() if _unsupported_reason(name) is None]


def _unsupported_reason(name: str | dict) -> str | None:
    cfg = open_clip.get_model_config(name) if isinstance(name, str) else name
    if cfg is None:
        return "unknown"
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if vision.get("timm_model_name") or isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is not a plain ViT"
    if text.get("hf_model_name") or cfg.get("custom_text") or cfg.get("multimodal_cfg"):
        return "its text tower is not the standard CLIP transformer"
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or vision.get("no_ln_pre"):
        return "it pools without a class token or has no ln_pre"
    if text.get("pool_type", "argmax") != "argmax" or text.get("vocab_size", 49408) != 49408:
        return "its text tower does not use the CLIP BPE vocabulary with EOT pooling"
    return None


def backbone_config(name: str | dict) -> dict:
    """The open_clip model config of a backbone: a registered name, an open_clip-style JSON
    file, or the config itself (as a checkpoint carries it). Checked to be a supported ViT."""
    if isinstance(name, dict):
        cfg, what = name, "the backbone config"
    elif name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"backbone {name!r}: no such model config file")
        try:
            cfg = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"backbone {name}: not valid JSON: {err}") from None
        what = f"backbone {name}"
        if not isinstance(cfg, dict) or not isinstance(cfg.get("vision_cfg"), dict) or not isinstance(cfg.get("text_cfg"), dict):
            raise ValueError(f"{what}: expected an open_clip model config with 'embed_dim', 'vision_cfg' and 'text_cfg'")
        # open_clip's defaults would be taken silently and split the attention differently
        for section, key in (("vision_cfg", "head_width"), ("text_cfg", "heads")):
            if key not in cfg[section]:
                raise ValueError(f"{what}: {section}.{key} is missing; state it (the weights do not show the head "
                                 f"count, open_clip would assume {64 if key == 'head_width' else 8})")
    else:
        cfg, what = open_clip.get_model_config(name), f"backbone {name!r}"
    reason = _unsupported_reason(cfg)
    if reason == "unknown":
        known = ", ".join(n for n in list_backbones() if n.startswith("ViT-"))
        raise ValueError(f"unknown backbone {name!r}; expected an open_clip ViT name such as: {known}, "
                         f"or the path of an open_clip model config .json")
    if reason is not None:
        raise ValueError(f"{what} is not supported: {reason}")
    if "embed_dim" not in cfg:
        raise ValueError(f"{what}: 'embed_dim' is missing")
    return cfg


def resolved_backbone_config(name: str | dict, quick_gelu: bool) -> dict:
    """The complete config a backbone is built from: every vision and text field explicit (so
    a later open_clip with other defaults builds the same network) and the activation resolved."""
    cfg = backbone_config(name)
    return {**{k: v for k, v in cfg.items() if k not in ("vision_cfg", "text_cfg", "quick_gelu")},
            "vision_cfg": dataclasses.asdict(CLIPVisionCfg(**cfg["vision_cfg"])),
            "text_cfg": dataclasses.asdict(CLIPTextCfg(**cfg["text_cfg"])),
            "quick_gelu": bool(quick_gelu)}


def tag_quick_gelu(name: str, tag: str) -> bool | None:
    """The activation open_clip's pretrained tag ``tag`` of ``name`` was trained with (``None``: unknown tag)."""
    cfg = open_clip.get_pretrained_cfg(name, tag) if name else None
    return bool(cfg.get("quick_gelu", False)) if cfg else None


def create_backbone(
    name: str | dict,
    pretrained: str | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
    config: dict | None = None,
) -> open_clip.CLIP:
    """Build an open_clip CLIP model and load its weights.

    Args:
        name: open_clip model name, e.g. ``"ViT-B-16"`` or a tiny config ``"ViT-Tiny-16"``, the
            path of an open_clip model config ``.json``, or such a config as a dict (what
            checkpoints carry; its ``quick_gelu`` is then the resolved activation).
        pretrained: an open_clip pretrained tag of ``name`` (``"openai"``), a path to a weight
            file, or ``None`` for random weights.
        quick_gelu: activation of the MLPs. ``None`` takes it from the pretrained tag (OpenAI
            weights were trained with QuickGELU) or else from the model config.
        cache_dir: where open_clip looks for downloaded weights.
        config: the resolved config to build instead of looking ``name`` up (what a checkpoint
            carries); ``name`` still finds the pretrained tag.

    The model's ``backbone_config`` attribute is its :func:`resolved_backbone_config`.

    The model is built on the current default device, so ``with torch.device("meta"):``
    builds it without allocating weights (then ``pretrained`` must be ``None``).
    """
    cfg = backbone_config(config if config is not None else name)
    if config is not None and quick_gelu is None:
        quick_gelu = bool(config.get("quick_gelu", False))  # resolved when the checkpoint was written
    label = name if isinstance(name, str) else "the checkpoint's backbone"
    tag_cfg = None
    if pretrained is not None and not looks_like_path(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained) if isinstance(name, str) else {}
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name) if isinstance(name, str) else []
            raise ValueError(
                f"pretrained={pretrained!r} is neither an existing file nor a pretrained tag of {label!r} "
                f"(its tags: {tags or 'none'}); pass an open_clip tag or the path of a checkpoint file"
            )
    if quick_gelu is None:
        source = tag_cfg if tag_cfg is not None else cfg
        quick_gelu = bool(source.get("quick_gelu", False))

    resolved = resolved_backbone_config(cfg, quick_gelu)
    # built from the config itself (not by name): files and checkpoint configs need no registration
    model = open_clip.CLIP(**resolved)
    model.backbone_config = resolved
    if pretrained is not None:
        if model.logit_scale.is_meta:
            raise ValueError("pretrained weights cannot be loaded into a model built on the meta device")
        path = pretrained if tag_cfg is None else _download(name, pretrained, tag_cfg, cache_dir)
        load_backbone_weights(model, path)
    return model


@lru_cache(maxsize=1)
def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether downloads can work at all: ``HF_HUB_OFFLINE`` unset and the hub answers one TCP
    connection (asked once per process, instead of a minute of retries per file)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _download(name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    def unavailable(reason: str) -> PretrainedWeightsUnavailable:
        return PretrainedWeightsUnavailable(
            f"the {tag!r} weights of backbone {name!r} are not in the local cache and {reason}. On a machine "
            f"with internet, run `python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` "
            f"and copy the Hugging Face cache, or download the checkpoint "
            f"({tag_cfg.get('url') or tag_cfg.get('hf_hub')}) yourself, then pass "
            f"pretrained='/path/to/checkpoint' (OpenAI .pt, open_clip .bin/.pt or .safetensors).")

    if not hub_reachable():
        # cached files still load offline; only a miss is an error, and it comes at once
        with _hub_offline():
            try:
                path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
            except Exception as err:  # hub and URL errors come in many types; all mean "not available"
                raise unavailable("this machine is offline (HF_HUB_OFFLINE set or the hub unreachable)") from err
    else:
        try:
            path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
        except Exception as err:  # hub and URL errors come in many types; all mean "not available"
            raise unavailable(f"could not be downloaded ({type(err).__name__}: {err})") from err
    if not path:
        raise PretrainedWeightsUnavailable(f"open_clip has no download location for {name!r} / {tag!r}")
    return path


class _hub_offline:
    """``HF_HUB_OFFLINE=1`` for the duration (huggingface_hub reads its constant at import, so both)."""

    def __enter__(self):
        import huggingface_hub.constants as constants

        self.previous = (os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE)
        os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True

    def __exit__(self, *exc):
        import huggingface_hub.constants as constants

        env, constants.HF_HUB_OFFLINE = self.previous
        if env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = env


def read_clip_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CLIP checkpoint file into a flat open_clip-layout state dict.

    Accepts OpenAI TorchScript archives, OpenAI and open_clip state dicts (optionally under a
    ``state_dict`` / ``model`` key, with DDP ``module.`` prefixes) and ``.safetensors`` files.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file {path!r} does not exist")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return strip_prefix(load_file(path, device="cpu"), "module.")
    if _is_torchscript_archive(path):
        # OpenAI's released .pt files are TorchScript archives, not pickled state dicts.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
            state = torch.jit.load(path, map_location="cpu").state_dict()
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"cannot read checkpoint {path!r}: {type(err).__name__}: {err}") from err
    state = unwrap_state_dict(state, path)
    for key in ("input_resolution", "context_length", "vocab_size", "attn_mask"):
        state.pop(key, None)  # metadata and derived entries of TorchScript archives
    return state


def _is_torchscript_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in archive.namelist())


def load_backbone_weights(model: open_clip.CLIP, path: str | os.PathLike) -> None:
    """Load a CLIP checkpoint file into an open_clip model, with shape checks that name the key."""
    state = read_clip_state_dict(path)
    if getattr(model, "logit_bias", None) is None:
        state.pop("logit_bias", None)
    if "logit_scale" in state and state["logit_scale"].shape != model.logit_scale.shape:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    load_state_dict_checked(model, state, source=os.fspath(path), strict=True)


def patch_tokens(visual: torch.nn.Module, frames: torch.Tensor) -> torch.Tensor:
    """CLIP ViT input tokens of ``(N, 3, H, W)`` frames: ``[CLS, patches] + pos``, (N, 1+P, D), before ``ln_pre``.

    ``visual`` is anything with open_clip's ``conv1``, ``class_embedding`` and
    ``positional_embedding`` (the open_clip tower itself or Vita-CLIP's video encoder).
    """
    x = visual.conv1(frames.to(visual.conv1.weight.dtype))
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
    return torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)


def freeze(module: torch.nn.Module) -> torch.nn.Module:
    for param in module.parameters():
        param.requires_grad_(False)
    return module
