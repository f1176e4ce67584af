"""Frozen CLIP backbones from open_clip: names, tiny test configs and weight loading.

Any open_clip ViT with the standard CLIP text tower can serve as the backbone
(``ViT-B-32``, ``ViT-B-16``, ``ViT-L-14``, their ``-quickgelu`` forms, ...). Weights come
from an open_clip pretrained tag (``"openai"``, ``"laion2b_s34b_b88k"``, ...) or from a local
file holding an OpenAI (TorchScript or state dict) or open_clip checkpoint. Nothing is
downloaded when the weights are already in the Hugging Face cache; when they are not and
the machine is offline, :class:`PretrainedWeightsUnavailable` says how to supply a file.

Two tiny configs for tests and the demo are registered with open_clip on import:
``ViT-Tiny-16`` (32 px, patch 16, width 64, 3 layers, 4 heads; the golden test config) and
``ViT-Tiny-8`` (64 px, patch 8, width 96, 3 layers, 3 heads).
"""
from __future__ import annotations

import os
import warnings
import zipfile
from pathlib import Path

import open_clip
import torch
from open_clip.model import resize_pos_embed

from ..checkpoints.io import load_state_dict_checked, strip_prefix, unwrap_state_dict
from ..errors import PretrainedWeightsUnavailable

_TINY_CONFIG_DIR = Path(__file__).parent / "model_configs"
open_clip.add_model_config(_TINY_CONFIG_DIR)

TINY_BACKBONES = tuple(sorted(p.stem for p in _TINY_CONFIG_DIR.glob("*.json")))
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def list_backbones() -> list[str]:
    """Names of the open_clip configs that can serve as a backbone (plain ViTs, CLIP text tower)."""
    return [name for name in open_clip.list_models() if _unsupported_reason(name) is None]


def _unsupported_reason(name: str) -> str | None:
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        return "unknown"
    vision, text = cfg.get("vision_cfg", {}), cfg.get("text_cfg", {})
    if "timm_model_name" in vision or isinstance(vision.get("layers"), (list, tuple)):
        return "its image tower is not a plain ViT"
    if "hf_model_name" in text or cfg.get("custom_text") or "multimodal_cfg" in cfg:
        return "its text tower is not the standard CLIP transformer"
    if vision.get("attentional_pool") or vision.get("pool_type", "tok") != "tok" or vision.get("no_ln_pre"):
        return "it pools without a class token or has no ln_pre"
    if text.get("pool_type", "argmax") != "argmax" or text.get("vocab_size", 49408) != 49408:
        return "its text tower does not use the CLIP BPE vocabulary with EOT pooling"
    return None


def create_backbone(
    name: str,
    pretrained: str | None = None,
    quick_gelu: bool | None = None,
    cache_dir: str | None = None,
) -> open_clip.CLIP:
    """Build an open_clip CLIP model and load its weights.

    Args:
        name: open_clip model name, e.g. ``"ViT-B-16"`` or a tiny config ``"ViT-Tiny-16"``.
        pretrained: an open_clip pretrained tag of ``name`` (``"openai"``), a path to a weight
            file, or ``None`` for random weights.
        quick_gelu: activation of the MLPs. ``None`` takes it from the pretrained tag (OpenAI
            weights were trained with QuickGELU) or else from the model config.
        cache_dir: where open_clip looks for downloaded weights.

    The model is built on the current default device, so ``with torch.device("meta"):``
    builds it without allocating weights (then ``pretrained`` must be ``None``).
    """
    reason = _unsupported_reason(name)
    if reason == "unknown":
        known = ", ".join(n for n in list_backbones() if n.startswith("ViT-"))
        raise ValueError(f"unknown backbone {name!r}; expected an open_clip ViT name such as: {known}")
    if reason is not None:
        raise ValueError(f"backbone {name!r} is not supported: {reason}")

    tag_cfg = None
    if pretrained is not None and not _looks_like_path(pretrained):
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if not tag_cfg:
            tags = open_clip.list_pretrained_tags_by_model(name)
            raise ValueError(
                f"pretrained={pretrained!r} is neither an existing file nor a pretrained tag of {name!r} "
                f"(its tags: {tags or 'none'}); pass an open_clip tag or the path of a checkpoint file"
            )
    if quick_gelu is None:
        if tag_cfg is not None:
            quick_gelu = bool(tag_cfg.get("quick_gelu", False))
        else:
            quick_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))

    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu, device=torch.get_default_device())
    if pretrained is not None:
        if model.logit_scale.is_meta:
            raise ValueError("pretrained weights cannot be loaded into a model built on the meta device")
        path = pretrained if tag_cfg is None else _download(name, pretrained, tag_cfg, cache_dir)
        load_backbone_weights(model, path)
    return model


def _looks_like_path(value: str) -> bool:
    return os.path.exists(value) or os.sep in value or value.lower().endswith(_WEIGHT_SUFFIXES)


def _download(name: str, tag: str, tag_cfg: dict, cache_dir: str | None) -> str:
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # hub and URL errors come in many types; all mean "not available"
        raise PretrainedWeightsUnavailable(
            f"the {tag!r} weights of backbone {name!r} are not in the local cache and could not be "
            f"downloaded ({type(err).__name__}: {err}). On a machine with internet, run "
            f"`python -c \"import open_clip; open_clip.create_model('{name}', pretrained='{tag}')\"` "
            f"and copy the Hugging Face cache, or download the checkpoint "
            f"({tag_cfg.get('url') or tag_cfg.get('hf_hub')}) yourself, then pass "
            f"pretrained='/path/to/checkpoint' (OpenAI .pt, open_clip .bin/.pt or .safetensors)."
        ) from err
    if not path:
        raise PretrainedWeightsUnavailable(f"open_clip has no download location for {name!r} / {tag!r}")
    return path


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
