"""Reading and writing model weights: this package's checkpoints and the original layouts.

A vita-clip checkpoint is a plain dict (loadable with ``torch.load(weights_only=True)``)::

    {"format": "vita-clip", "version": 1, "architecture": "vita" | "vifi",
     "config": {...}, "prompt_classnames": [...], "classnames": [...], "templates": [...] | None,
     "trainable_only": bool, "state_dict": {...}}

With ``trainable_only`` the frozen CLIP weights are left out (they come from
``config["pretrained"]`` when the model is rebuilt): 30 M instead of 187 M parameters for a
Vita-CLIP B/16. Files are written atomically (temporary file + rename).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

from .backbone import unwrap_state_dict
from .convert import convert_vifi_state_dict, convert_vita_state_dict, is_original_vifi_state_dict, is_original_vita_state_dict
from .errors import CheckpointMismatchError
from .state_dict import load_state_dict_checked

FORMAT = "vita-clip"
VERSION = 1


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``:
    a crash mid-write never leaves a truncated checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def architecture_of(model: nn.Module) -> str:
    from .vifi import ViFiCLIP
    from .vita import VitaCLIP

    if isinstance(model, VitaCLIP):
        return "vita"
    if isinstance(model, ViFiCLIP):
        return "vifi"
    raise TypeError(f"expected a VitaCLIP or ViFiCLIP model, got {type(model).__name__}")


def trainable_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in trainable}


def model_description(model: nn.Module) -> dict:
    """What :func:`vita_clip.load_model` needs besides the weights: format, architecture,
    config, the classes the prompts were built for, and the current classes and templates."""
    from .config import config_to_dict

    learner = getattr(model, "prompt_learner", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "architecture": architecture_of(model),
        "config": config_to_dict(model.config),
        "prompt_classnames": learner.classnames if learner is not None else model.classnames,
        "classnames": model.classnames,
        "templates": list(model.templates) if model.templates is not None else None,
    }


def weights_to_save(model: nn.Module, trainable_only: bool | None = None) -> tuple[dict[str, torch.Tensor], bool]:
    """``(weights, trainable_only)``: ``trainable_only=None`` leaves the frozen weights out only
    when they can be rebuilt, i.e. when the config names pretrained CLIP weights."""
    if trainable_only is None:
        trainable_only = model.config.pretrained is not None
    state = trainable_state_dict(model) if trainable_only else model.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}, trainable_only


def checkpoint_dict(model: nn.Module, trainable_only: bool | None = None) -> dict:
    """The checkpoint of ``model`` as a dict (see the module docstring)."""
    weights, trainable_only = weights_to_save(model, trainable_only)
    return {**model_description(model), "trainable_only": trainable_only, "state_dict": weights}


def save_checkpoint(model: nn.Module, path: str | os.PathLike, trainable_only: bool | None = None) -> None:
    """Write ``model``'s weights, config and classes to ``path`` atomically."""
    atomic_save(checkpoint_dict(model, trainable_only), path)


def read_checkpoint(source) -> dict:
    """Read any supported checkpoint into ``{"kind", "state_dict", ...}``.

    ``kind`` is ``"vita-clip"`` (this package), ``"original-vita"`` or ``"original-vifi"``
    (converted to this package's keys), or ``"state_dict"`` (already in this layout).
    ``source`` is a path (a file, or a training checkpoint folder ``checkpoint-<step>``) or
    an already loaded object.
    """
    name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "checkpoint"
    if isinstance(source, (str, os.PathLike)) and os.path.isdir(source):
        from .engine.state import read_training_state  # a training checkpoint folder

        state, weights = read_training_state(source)
        return {**state["model"], "kind": "vita-clip", "state_dict": weights, "source": name}
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"checkpoint file {name!r} does not exist")
        try:
            # Original checkpoints are plain tensor dicts too, so weights_only works for all.
            source = torch.load(source, map_location="cpu", weights_only=True)
        except Exception as err:
            raise CheckpointMismatchError(f"cannot read checkpoint {name!r}: {type(err).__name__}: {err}") from err
    if isinstance(source, dict) and source.get("format") == FORMAT:
        if source.get("version") != VERSION:
            raise CheckpointMismatchError(f"{name}: vita-clip checkpoint version {source.get('version')} is not supported (expected {VERSION})")
        return {**source, "kind": "vita-clip", "source": name}
    state = unwrap_state_dict(source, name)
    if is_original_vita_state_dict(state):
        return {"kind": "original-vita", "state_dict": convert_vita_state_dict(state), "source": name}
    if is_original_vifi_state_dict(state):
        return {"kind": "original-vifi", "state_dict": convert_vifi_state_dict(state), "source": name}
    return {"kind": "state_dict", "state_dict": state, "source": name}


def covers_backbone(state: dict) -> bool:
    """Whether a state dict holds the frozen CLIP weights too (then no pretrained CLIP is needed)."""
    return "visual.conv1.weight" in state and "text.token_embedding.weight" in state


def load_weights(model: nn.Module, checkpoint: dict) -> None:
    """Load a :func:`read_checkpoint` result into ``model``, naming every key or shape that does
    not fit. A checkpoint may lack only what its kind never holds: the frozen weights
    (trainable-only checkpoints), the token embedding (ViFi-CLIP checkpoints) or the learned
    weights (the original converted CLIP backbone, which only initialises the model)."""
    state, source, kind = checkpoint["state_dict"], checkpoint["source"], checkpoint["kind"]
    missing, unexpected = load_state_dict_checked(model, state, source=source, strict=False)
    if unexpected:
        raise CheckpointMismatchError(f"{source} has keys this {type(model).__name__} lacks "
                                      f"(another prompt configuration?): {unexpected[:8]}")
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if checkpoint.get("trainable_only"):
        may_lack = set(missing) - trainable
    elif kind == "original-vifi":
        may_lack = {"text.token_embedding.weight"}
    elif kind == "original-vita" and not (set(state) & trainable) - {"logit_scale"}:
        may_lack = trainable
    else:
        may_lack = set()
    lacking = [k for k in missing if k not in may_lack]
    if lacking:
        raise CheckpointMismatchError(f"{source} lacks {len(lacking)} weights of this {type(model).__name__}: {lacking[:8]}")
